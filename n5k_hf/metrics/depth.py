"""Depth metrics with the official Depth Anything V2 (metric) definitions.

Per image, over the valid pixels (``d = log t - log p``, ``p`` predicted and ``t`` reference depth
in metres):

- ``d1``, ``d2``, ``d3``: share of pixels with ``max(p/t, t/p) < 1.25, 1.25**2, 1.25**3`` (0..1);
- ``abs_rel = mean(|p - t| / t)``, ``sq_rel = mean((p - t)**2 / t)``;
- ``rmse = sqrt(mean((p - t)**2))`` (m), ``rmse_log = sqrt(mean(d**2))``,
  ``log10 = mean(|log10 p - log10 t|)``, ``silog = sqrt(mean(d**2) - 0.5 * mean(d)**2)``;
- ``mae_mm = 1000 * mean(|p - t|)`` and ``rmse_mm = 1000 * rmse`` (millimetres).

As in the official evaluation, a split's metrics are the mean of the per-image metrics
(:class:`DepthMetricsAccumulator`), not metrics over the pooled pixels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

DEPTH_METRIC_NAMES = (
    "d1",
    "d2",
    "d3",
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "silog",
    "mae_mm",
    "rmse_mm",
)

# "food": food mask & valid depth; "image": every valid pixel.
DEPTH_REGIONS = ("food", "image")


def depth_metrics(pred_m: np.ndarray, target_m: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Official DAV2 depth metrics of one image.

    Args:
        pred_m: (H, W) predicted depth in metres.
        target_m: (H, W) reference depth in metres.
        valid: (H, W) bool, the pixels to evaluate.

    Returns:
        ``{name: float}`` for every name in :data:`DEPTH_METRIC_NAMES`.

    Raises:
        ValueError: shapes differ, ``valid`` selects no pixel, or a selected pixel has a
            non-finite or non-positive predicted or reference depth (the log metrics need > 0).
    """
    pred_m = np.asarray(pred_m)
    target_m = np.asarray(target_m)
    valid = np.asarray(valid)
    if pred_m.ndim != 2 or pred_m.shape != target_m.shape or pred_m.shape != valid.shape:
        raise ValueError(
            f"depth_metrics: pred_m {pred_m.shape}, target_m {target_m.shape} and valid {valid.shape} "
            "must be the same (H, W) shape"
        )
    if valid.dtype != np.bool_:
        raise ValueError(f"depth_metrics: valid must be a bool array, got dtype {valid.dtype}")
    if not valid.any():
        raise ValueError("depth_metrics: valid selects no pixel")
    pred = pred_m[valid].astype(np.float64)
    target = target_m[valid].astype(np.float64)
    for name, values in (("pred_m", pred), ("target_m", target)):
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            raise ValueError(
                f"depth_metrics: {name} has {int(bad.sum())} non-finite or non-positive values "
                "at valid pixels (depths must be > 0 m where valid)"
            )

    ratio = np.maximum(pred / target, target / pred)
    diff = pred - target
    log_diff = np.log(target) - np.log(pred)
    mean_sq_log = float(np.mean(log_diff**2))
    rmse_m = float(np.sqrt(np.mean(diff**2)))
    # mean(d^2) - 0.5 mean(d)^2 >= 0.5 mean(d^2) >= 0, so the root is always real.
    silog = float(np.sqrt(mean_sq_log - 0.5 * float(np.mean(log_diff)) ** 2))
    return {
        "d1": float(np.mean(ratio < 1.25)),
        "d2": float(np.mean(ratio < 1.25**2)),
        "d3": float(np.mean(ratio < 1.25**3)),
        "abs_rel": float(np.mean(np.abs(diff) / target)),
        "sq_rel": float(np.mean(diff**2 / target)),
        "rmse": rmse_m,
        "rmse_log": float(np.sqrt(mean_sq_log)),
        "log10": float(np.mean(np.abs(np.log10(pred) - np.log10(target)))),
        "silog": silog,
        "mae_mm": 1000.0 * float(np.mean(np.abs(diff))),
        "rmse_mm": 1000.0 * rmse_m,
    }


class DepthMetricsAccumulator:
    """Mean of per-image depth metrics over a split, for the "food" and "image" regions.

    An image whose region holds no valid pixel is skipped for that region and counted in
    ``num_skipped``. Use :meth:`merge` to combine accumulators built on separate processes.
    """

    def __init__(self) -> None:
        self._sums = {region: dict.fromkeys(DEPTH_METRIC_NAMES, 0.0) for region in DEPTH_REGIONS}
        self._num_images = dict.fromkeys(DEPTH_REGIONS, 0)
        self._num_skipped = dict.fromkeys(DEPTH_REGIONS, 0)

    def update(
        self, pred_m: np.ndarray, target_m: np.ndarray, valid: np.ndarray, food_mask: np.ndarray
    ) -> dict[str, dict[str, float] | None]:
        """Add one image.

        Args:
            pred_m: (H, W) predicted depth in metres.
            target_m: (H, W) reference depth in metres.
            valid: (H, W) bool, pixels with a usable reference depth.
            food_mask: (H, W) bool, the food pixels.

        Returns:
            ``{region: metrics}`` of this image, with ``None`` for a skipped region (so that the
            caller can report per-dish numbers such as the food ``mae_mm``).
        """
        valid = np.asarray(valid)
        food_mask = np.asarray(food_mask)
        if food_mask.shape != valid.shape or food_mask.dtype != np.bool_:
            raise ValueError(
                f"DepthMetricsAccumulator.update: food_mask must be a bool array of shape {valid.shape}, "
                f"got {food_mask.dtype} {food_mask.shape}"
            )
        region_masks = {"food": food_mask & valid, "image": valid}
        per_image: dict[str, dict[str, float] | None] = {}
        for region in DEPTH_REGIONS:
            if not region_masks[region].any():
                self._num_skipped[region] += 1
                per_image[region] = None
                continue
            metrics = depth_metrics(pred_m, target_m, region_masks[region])
            for name, value in metrics.items():
                self._sums[region][name] += value
            self._num_images[region] += 1
            per_image[region] = metrics
        return per_image

    def merge(self, other: DepthMetricsAccumulator) -> None:
        """Add the images of ``other`` to this accumulator."""
        for region in DEPTH_REGIONS:
            for name in DEPTH_METRIC_NAMES:
                self._sums[region][name] += other._sums[region][name]
            self._num_images[region] += other._num_images[region]
            self._num_skipped[region] += other._num_skipped[region]

    def compute(self) -> dict[str, dict[str, float]]:
        """``{region: {metric: mean over images, "num_images": n, "num_skipped": k}}``.

        A region without any evaluated image has NaN metrics (and ``num_images == 0``).
        """
        result: dict[str, dict[str, float]] = {}
        for region in DEPTH_REGIONS:
            count = self._num_images[region]
            means = {
                name: (self._sums[region][name] / count if count else float("nan"))
                for name in DEPTH_METRIC_NAMES
            }
            result[region] = {
                **means,
                "num_images": count,
                "num_skipped": self._num_skipped[region],
            }
        return result


def flatten_metrics(nested: Mapping[str, object], separator: str = "/") -> dict[str, float]:
    """Flatten nested metric dicts: ``{"food": {"d1": 0.9}}`` -> ``{"food/d1": 0.9}``."""
    flat: dict[str, float] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_metrics(value, separator).items():
                flat[f"{key}{separator}{sub_key}"] = sub_value
        else:
            flat[str(key)] = value  # type: ignore[assignment]
    return flat
