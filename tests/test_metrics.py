"""Depth and volume metrics against hand-computed values, and the local `evaluate` module."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import n5k_hf.metrics
from n5k_hf.metrics import (
    DEPTH_METRIC_NAMES,
    DepthMetricsAccumulator,
    absolute_percentage_error,
    depth_metrics,
    flatten_metrics,
    per_dish_rows,
    volume_metrics,
)

EVALUATE_MODULE_DIR = Path(n5k_hf.metrics.__file__).parent / "n5k_volume_depth"


def _five_pixel_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(2, 3) maps with five valid pixels (p, t) and one invalid pixel (pred 9 m, target NaN).

    A (1.1, 1.0)  ratio 1.1   B (1.0, 1.5)  ratio 1.5   C (2.0, 2.0)  ratio 1.0
    D (1.8, 1.0)  ratio 1.8   E (1.0, 3.0)  ratio 3.0
    """
    pred_m = np.array([[1.1, 1.0, 2.0], [1.8, 1.0, 9.0]])
    target_m = np.array([[1.0, 1.5, 2.0], [1.0, 3.0, np.nan]])
    valid = np.array([[True, True, True], [True, True, False]])
    return pred_m, target_m, valid


def test_depth_metrics_match_hand_computed_values() -> None:
    metrics = depth_metrics(*_five_pixel_image())
    # Ratios 1.1, 1.5, 1.0, 1.8, 3.0 against 1.25, 1.5625, 1.953125.
    assert metrics["d1"] == pytest.approx(2 / 5)
    assert metrics["d2"] == pytest.approx(3 / 5)
    assert metrics["d3"] == pytest.approx(4 / 5)
    # |p - t| = 0.1, 0.5, 0, 0.8, 2.0
    assert metrics["abs_rel"] == pytest.approx((0.1 / 1.0 + 0.5 / 1.5 + 0.0 + 0.8 / 1.0 + 2.0 / 3.0) / 5)
    assert metrics["abs_rel"] == pytest.approx(0.38)
    assert metrics["sq_rel"] == pytest.approx((0.01 / 1.0 + 0.25 / 1.5 + 0.0 + 0.64 / 1.0 + 4.0 / 3.0) / 5)
    assert metrics["sq_rel"] == pytest.approx(0.43)
    assert metrics["rmse"] == pytest.approx(math.sqrt((0.01 + 0.25 + 0.0 + 0.64 + 4.0) / 5))
    assert metrics["rmse_mm"] == pytest.approx(1000 * math.sqrt(0.98))
    assert metrics["mae_mm"] == pytest.approx(1000 * (0.1 + 0.5 + 0.0 + 0.8 + 2.0) / 5)
    assert metrics["mae_mm"] == pytest.approx(680.0)
    # d = ln t - ln p
    log_diffs = [-math.log(1.1), math.log(1.5), 0.0, -math.log(1.8), math.log(3.0)]
    mean_sq = sum(d * d for d in log_diffs) / 5
    mean = sum(log_diffs) / 5
    assert metrics["rmse_log"] == pytest.approx(math.sqrt(mean_sq))
    assert metrics["silog"] == pytest.approx(math.sqrt(mean_sq - 0.5 * mean**2))
    assert metrics["log10"] == pytest.approx(sum(abs(d) for d in log_diffs) / math.log(10) / 5)
    assert set(metrics) == set(DEPTH_METRIC_NAMES)


def test_silog_of_a_constant_scale_error() -> None:
    # p = 2 t everywhere: d = -ln 2 on every pixel, silog = sqrt(ln2^2 - 0.5 ln2^2) = ln 2 / sqrt 2.
    target_m = np.array([[0.3, 0.35], [0.4, 0.5]])
    metrics = depth_metrics(2 * target_m, target_m, np.ones((2, 2), dtype=bool))
    assert metrics["silog"] == pytest.approx(math.log(2) / math.sqrt(2))
    assert metrics["rmse_log"] == pytest.approx(math.log(2))
    assert metrics["abs_rel"] == pytest.approx(1.0)
    assert metrics["d1"] == 0.0
    assert metrics["d3"] == 0.0  # ratio 2 > 1.953125


def test_perfect_prediction_scores_zero_error() -> None:
    target_m = np.array([[0.3, 0.35], [0.4, 0.5]], dtype=np.float32)
    metrics = depth_metrics(target_m, target_m, np.ones((2, 2), dtype=bool))
    assert metrics["d1"] == 1.0
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "mae_mm", "rmse_mm"):
        assert metrics[name] == 0.0


@pytest.mark.parametrize(
    ("pred_value", "target_value", "message"),
    [(0.0, 0.4, "pred_m has 1 non-finite or non-positive"), (0.4, np.nan, "target_m has 1 non-finite")],
)
def test_depth_metrics_reject_bad_depths_at_valid_pixels(pred_value, target_value, message) -> None:
    pred_m = np.array([[0.4, pred_value]])
    target_m = np.array([[0.4, target_value]])
    with pytest.raises(ValueError, match=message):
        depth_metrics(pred_m, target_m, np.ones((1, 2), dtype=bool))


def test_depth_metrics_reject_empty_and_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="selects no pixel"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="same"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 3)), np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="bool"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))


def test_accumulator_averages_per_image_and_counts_skipped_regions() -> None:
    accumulator = DepthMetricsAccumulator()
    # Image 1: one valid pixel, error 0.1 m, which is food.
    per_image = accumulator.update(
        np.array([[0.5, 0.9]]),
        np.array([[0.4, np.nan]]),
        np.array([[True, False]]),
        np.array([[True, True]]),
    )
    assert per_image["food"]["mae_mm"] == pytest.approx(100.0)
    # Image 2: three valid pixels, error 0.5 m each, no food at all.
    per_image = accumulator.update(
        np.full((1, 3), 1.0), np.full((1, 3), 0.5), np.ones((1, 3), dtype=bool), np.zeros((1, 3), dtype=bool)
    )
    assert per_image["food"] is None
    result = accumulator.compute()
    # Per image then averaged: (100 + 500) / 2 = 300 mm (pooled pixels would give 1600 / 4 = 400 mm).
    assert result["image"]["mae_mm"] == pytest.approx(300.0)
    assert result["image"]["abs_rel"] == pytest.approx((0.1 / 0.4 + 0.5 / 0.5) / 2)
    assert result["image"]["num_images"] == 2
    assert result["image"]["num_skipped"] == 0
    assert result["food"]["mae_mm"] == pytest.approx(100.0)
    assert result["food"]["num_images"] == 1
    assert result["food"]["num_skipped"] == 1


def test_accumulator_merge_equals_one_accumulator() -> None:
    rng = np.random.default_rng(3)
    images = [
        (
            rng.uniform(0.3, 0.4, (4, 5)),
            rng.uniform(0.3, 0.4, (4, 5)),
            rng.random((4, 5)) > 0.2,
            rng.random((4, 5)) > 0.5,
        )
        for _ in range(4)
    ]
    whole, first, second = DepthMetricsAccumulator(), DepthMetricsAccumulator(), DepthMetricsAccumulator()
    for index, image in enumerate(images):
        whole.update(*image)
        (first if index < 2 else second).update(*image)
    first.merge(second)
    for region, metrics in whole.compute().items():
        for name, value in metrics.items():
            assert first.compute()[region][name] == pytest.approx(value)


def test_empty_accumulator_reports_nan() -> None:
    result = DepthMetricsAccumulator().compute()
    assert math.isnan(result["food"]["d1"])
    assert result["food"]["num_images"] == 0


def test_flatten_metrics() -> None:
    assert flatten_metrics({"a": 1.0, "depth": {"food": {"d1": 0.5}}}) == {"a": 1.0, "depth/food/d1": 0.5}


# Four dishes: predicted 110, 90, 230, 100 mL against reference 100, 100, 200, 50 mL.
# Errors +10, -10, +30, +50 mL; APE 10, 10, 15, 100 %.
PRED_ML = np.array([110.0, 90.0, 230.0, 100.0])
REF_ML = np.array([100.0, 100.0, 200.0, 50.0])


def test_volume_metrics_match_hand_computed_values() -> None:
    metrics = volume_metrics(PRED_ML, REF_ML)
    assert metrics["volume_mae_ml"] == pytest.approx((10 + 10 + 30 + 50) / 4)  # 25
    assert metrics["volume_mean_error_ml"] == pytest.approx((10 - 10 + 30 + 50) / 4)  # 20
    assert metrics["volume_mape"] == pytest.approx((10 + 10 + 15 + 100) / 4)  # 33.75
    assert metrics["volume_median_ape"] == pytest.approx((10 + 15) / 2)  # 12.5
    assert metrics["within_10pct"] == pytest.approx(100 * 2 / 4)  # APE 10 counts as within 10 %
    assert metrics["within_20pct"] == pytest.approx(100 * 3 / 4)
    assert metrics["count"] == 4
    np.testing.assert_allclose(absolute_percentage_error(PRED_ML, REF_ML), [10.0, 10.0, 15.0, 100.0])


@pytest.mark.parametrize("bad_reference", [0.0, -5.0, np.nan])
def test_volume_metrics_reject_non_positive_references(bad_reference) -> None:
    with pytest.raises(ValueError, match=r"ref_ml must be finite and > 0 mL: 1 rows .*first indices \[2\]"):
        volume_metrics(PRED_ML, np.array([100.0, 100.0, bad_reference, 50.0]))


def test_volume_metrics_reject_bad_shapes_and_predictions() -> None:
    with pytest.raises(ValueError, match="same N"):
        volume_metrics(PRED_ML, REF_ML[:3])
    with pytest.raises(ValueError, match="at least one dish"):
        volume_metrics(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="pred_ml must be finite"):
        volume_metrics(np.array([np.inf, 1.0, 1.0, 1.0]), REF_ML)


def test_per_dish_rows() -> None:
    rows = per_dish_rows(
        ["dish_1", "dish_2", "dish_3", "dish_4"],
        REF_ML,
        PRED_ML,
        np.array([1.5, 2.0, np.nan, 4.0]),
        [300.0, None, 120.0, 80.0],
    )
    assert list(rows[0]) == list(n5k_hf.metrics.PER_DISH_COLUMNS)
    assert rows[2] == {
        "dish_id": "dish_3",
        "reference_volume_ml": 200.0,
        "predicted_volume_ml": 230.0,
        "abs_error_ml": 30.0,
        "ape_pct": pytest.approx(15.0),
        "depth_mae_mm": pytest.approx(np.nan, nan_ok=True),
        "total_mass": 120.0,
    }
    assert rows[1]["total_mass"] is None
    assert rows[3]["ape_pct"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="same length"):
        per_dish_rows(["dish_1"], REF_ML, PRED_ML, np.zeros(4), [None] * 4)


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")


def test_evaluate_module_volume_matches_direct_function(offline_hub) -> None:
    import evaluate

    metric = evaluate.load(str(EVALUATE_MODULE_DIR))
    result = metric.compute(predictions=PRED_ML.tolist(), references=REF_ML.tolist())
    assert result == pytest.approx(volume_metrics(PRED_ML, REF_ML))
    assert result["volume_mape"] == pytest.approx(33.75)


def test_evaluate_module_depth_matches_accumulator(offline_hub) -> None:
    import evaluate

    metric = evaluate.load(str(EVALUATE_MODULE_DIR), "depth")
    pred_m, target_m, valid = _five_pixel_image()
    food_mask = np.array([[True, True, False], [False, False, False]])
    # Two batches: evaluate stores them and computes over both at the end.
    metric.add_batch(predictions=[pred_m], references=[target_m], food_masks=[food_mask])
    metric.add_batch(
        predictions=[2 * target_m[:, :2]], references=[target_m[:, :2]], food_masks=[food_mask[:, :2]]
    )
    result = metric.compute()

    accumulator = DepthMetricsAccumulator()
    accumulator.update(pred_m, target_m, valid, food_mask)
    accumulator.update(2 * target_m[:, :2], target_m[:, :2], valid[:, :2], food_mask[:, :2])
    expected = flatten_metrics(accumulator.compute())
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        # evaluate stores depth maps as float32.
        assert result[key] == pytest.approx(value, rel=1e-5), key
    # Image 2: p = 2t, so |p - t| = t = 1.0, 1.5, 1.0, 3.0 m: 1625 mm; mean with image 1: (680 + 1625) / 2.
    assert result["image/mae_mm"] == pytest.approx((680.0 + 1000 * (1.0 + 1.5 + 1.0 + 3.0) / 4) / 2, rel=1e-5)
