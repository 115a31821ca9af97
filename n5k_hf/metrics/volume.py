"""Volume metrics over a split, and the rows of ``per_dish.csv``.

Percentages are in percent (0..100), including ``within_10pct`` and ``within_20pct``. A row whose
reference volume is not a finite positive number is rejected with a ``ValueError`` (never dropped
silently): the caller filters such dishes and reports how many it dropped. APE (absolute
percentage error) = ``100 * |predicted - reference| / reference``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VOLUME_METRIC_NAMES = (
    "volume_mae_ml",
    "volume_mean_error_ml",
    "volume_mape",
    "volume_median_ape",
    "within_10pct",
    "within_20pct",
    "count",
)

PER_DISH_COLUMNS = (
    "dish_id",
    "reference_volume_ml",
    "predicted_volume_ml",
    "abs_error_ml",
    "ape_pct",
    "depth_mae_mm",
    "total_mass",
)


def _checked_volumes(pred_ml: np.ndarray, ref_ml: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N,) predicted and reference volumes; return them as float64."""
    pred = np.asarray(pred_ml, dtype=np.float64)
    ref = np.asarray(ref_ml, dtype=np.float64)
    if pred.ndim != 1 or pred.shape != ref.shape:
        raise ValueError(f"pred_ml {pred.shape} and ref_ml {ref.shape} must be (N,) arrays of the same N")
    if pred.size == 0:
        raise ValueError("volume metrics need at least one dish, got 0")
    bad_ref = np.flatnonzero(~(np.isfinite(ref) & (ref > 0)))
    if bad_ref.size:
        raise ValueError(
            f"ref_ml must be finite and > 0 mL: {bad_ref.size} rows are not "
            f"(first indices {bad_ref[:5].tolist()}, values {ref[bad_ref[:5]].tolist()}); "
            "filter those dishes out before computing volume metrics"
        )
    bad_pred = np.flatnonzero(~np.isfinite(pred))
    if bad_pred.size:
        raise ValueError(
            f"pred_ml must be finite: {bad_pred.size} rows are not (first indices {bad_pred[:5].tolist()})"
        )
    return pred, ref


def absolute_percentage_error(pred_ml: np.ndarray, ref_ml: np.ndarray) -> np.ndarray:
    """(N,) ``100 * |pred - ref| / ref`` in percent, for (N,) volumes in mL (ref > 0)."""
    pred, ref = _checked_volumes(pred_ml, ref_ml)
    return _ape_pct(pred, ref)


def _ape_pct(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return 100.0 * np.abs(pred - ref) / ref


def volume_metrics(pred_ml: np.ndarray, ref_ml: np.ndarray) -> dict[str, float]:
    """Volume errors of N dishes.

    Args:
        pred_ml: (N,) predicted volumes in mL.
        ref_ml: (N,) reference volumes in mL, all > 0.

    Returns:
        ``volume_mae_ml`` (mL), ``volume_mean_error_ml`` (mean of pred - ref, mL: the bias),
        ``volume_mape`` and ``volume_median_ape`` (%), ``within_10pct`` and ``within_20pct``
        (% of dishes with APE <= 10 % and <= 20 %), ``count`` (N).
    """
    pred, ref = _checked_volumes(pred_ml, ref_ml)
    ape_pct = _ape_pct(pred, ref)
    return {
        "volume_mae_ml": float(np.mean(np.abs(pred - ref))),
        "volume_mean_error_ml": float(np.mean(pred - ref)),
        "volume_mape": float(np.mean(ape_pct)),
        "volume_median_ape": float(np.median(ape_pct)),
        "within_10pct": 100.0 * float(np.mean(ape_pct <= 10.0)),
        "within_20pct": 100.0 * float(np.mean(ape_pct <= 20.0)),
        "count": int(pred.size),
    }


def per_dish_rows(
    dish_ids: Sequence[str],
    reference_volume_ml: np.ndarray,
    predicted_volume_ml: np.ndarray,
    depth_mae_mm: np.ndarray,
    total_mass: Sequence[float | None],
) -> list[dict[str, object]]:
    """Rows of ``per_dish.csv``, one dict per dish with the keys of :data:`PER_DISH_COLUMNS`.

    Args:
        dish_ids: N dish ids.
        reference_volume_ml: (N,) reference volumes in mL, all > 0.
        predicted_volume_ml: (N,) predicted volumes in mL.
        depth_mae_mm: (N,) food-region depth MAE in mm (NaN where the food had no valid pixel).
        total_mass: N weighed masses in grams (``None`` where unknown).
    """
    pred, ref = _checked_volumes(predicted_volume_ml, reference_volume_ml)
    depth_mae = np.asarray(depth_mae_mm, dtype=np.float64)
    count = pred.size
    if len(dish_ids) != count or depth_mae.shape != (count,) or len(total_mass) != count:
        raise ValueError(
            f"per_dish_rows: {len(dish_ids)} dish_ids, {count} volumes, depth_mae_mm {depth_mae.shape} "
            f"and {len(total_mass)} total_mass values must all have the same length"
        )
    ape_pct = _ape_pct(pred, ref)
    return [
        {
            "dish_id": str(dish_ids[index]),
            "reference_volume_ml": float(ref[index]),
            "predicted_volume_ml": float(pred[index]),
            "abs_error_ml": float(abs(pred[index] - ref[index])),
            "ape_pct": float(ape_pct[index]),
            "depth_mae_mm": float(depth_mae[index]),
            "total_mass": None if total_mass[index] is None else float(total_mass[index]),
        }
        for index in range(count)
    ]
