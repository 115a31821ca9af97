"""`evaluate` metric for food volume (and depth) on Nutrition5k, backed by ``n5k_hf.metrics``.

Loads offline from its folder: ``evaluate.load("path/to/n5k_volume_depth")`` (volume, the default)
or ``evaluate.load("path/to/n5k_volume_depth", "depth")``. The arithmetic lives in
``n5k_hf.metrics``; this module only adapts it to the `evaluate` API. One import per line: the
`evaluate` import scanner does not understand ``import a, b``.
"""

import datasets
import evaluate
import numpy as np

from n5k_hf.hub.dataset_card import NUTRITION5K_BIBTEX
from n5k_hf.metrics.depth import DepthMetricsAccumulator, flatten_metrics
from n5k_hf.metrics.volume import volume_metrics

_DESCRIPTION = (
    "Food volume errors in millilitres and percent (config 'volume'), or the official Depth "
    "Anything V2 depth metrics averaged per image over the food and the whole image (config 'depth')."
)

_KWARGS_DESCRIPTION = """
Config "volume" (default):
    predictions: predicted dish volumes in mL.
    references: reference dish volumes in mL, all > 0.
Returns volume_mae_ml, volume_mean_error_ml, volume_mape (%), volume_median_ape (%),
within_10pct (%), within_20pct (%), count.

Config "depth":
    predictions: predicted depth maps, each (H, W) in metres.
    references: reference depth maps, each (H, W) in metres; NaN or <= 0 means no reading.
    food_masks: food masks, each (H, W) bool.
Returns "{region}/{metric}" for region in (food, image) and the metrics of
n5k_hf.metrics.DEPTH_METRIC_NAMES, plus "{region}/num_images" and "{region}/num_skipped".
"""

_CITATION = NUTRITION5K_BIBTEX + "\n"

_CONFIG_NAMES = ("volume", "depth")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class N5kVolumeDepth(evaluate.Metric):
    """Volume (default) or depth metrics for Nutrition5k dishes."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == "default":
            self.config_name = "volume"
        if self.config_name not in _CONFIG_NAMES:
            raise ValueError(
                f"n5k_volume_depth: unknown config {self.config_name!r}, expected one of {_CONFIG_NAMES}"
            )
        if self.config_name == "volume":
            features = datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            )
        else:
            depth_map = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))
            features = datasets.Features(
                {
                    "predictions": depth_map,
                    "references": depth_map,
                    "food_masks": datasets.Sequence(datasets.Sequence(datasets.Value("bool"))),
                }
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )

    def _compute(self, predictions, references, food_masks=None):
        if self.config_name == "volume":
            return volume_metrics(np.asarray(predictions), np.asarray(references))
        accumulator = DepthMetricsAccumulator()
        for pred_m, target_m, food_mask in zip(predictions, references, food_masks, strict=True):
            target = np.asarray(target_m, dtype=np.float64)
            valid = np.isfinite(target) & (target > 0)
            accumulator.update(np.asarray(pred_m), target, valid, np.asarray(food_mask, dtype=bool))
        return flatten_metrics(accumulator.compute())
