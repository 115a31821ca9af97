"""Depth and volume metrics (pure numpy), plus a local `evaluate` module in ``n5k_volume_depth/``."""

from n5k_hf.metrics.depth import (
    DEPTH_METRIC_NAMES,
    DEPTH_REGIONS,
    DepthMetricsAccumulator,
    depth_metrics,
    flatten_metrics,
)
from n5k_hf.metrics.volume import (
    PER_DISH_COLUMNS,
    VOLUME_METRIC_NAMES,
    absolute_percentage_error,
    per_dish_rows,
    volume_metrics,
)

__all__ = [
    "DEPTH_METRIC_NAMES",
    "DEPTH_REGIONS",
    "PER_DISH_COLUMNS",
    "VOLUME_METRIC_NAMES",
    "DepthMetricsAccumulator",
    "absolute_percentage_error",
    "depth_metrics",
    "flatten_metrics",
    "per_dish_rows",
    "volume_metrics",
]
