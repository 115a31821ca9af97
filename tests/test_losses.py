"""Losses: hand-computed values, zero at the target, descent, and finiteness on degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch

from n5k_hf.losses import (
    CompositeDepthLoss,
    gradient_matching_loss,
    plane_loss,
    silog_loss,
    volume_loss,
)

FOCAL_PX = 465.14
TABLE_DEPTH_M = 0.359
LN2 = math.log(2.0)


def box_batch(batch: int = 2, height: int = 48, width: int = 64):
    """Table at 0.359 m, a 3 cm box of 16 x 12 pixels in the middle, a ring 4 px away from it."""
    K = torch.tensor(
        [[FOCAL_PX / 10, 0.0, (width - 1) / 2], [0.0, FOCAL_PX / 10, (height - 1) / 2], [0, 0, 1.0]]
    )
    K = K.expand(batch, 3, 3).clone()
    target = torch.full((batch, height, width), TABLE_DEPTH_M)
    food = torch.zeros((batch, height, width), dtype=torch.bool)
    food[:, 18:30, 24:40] = True
    target[food] = TABLE_DEPTH_M - 0.03
    ring = torch.zeros_like(food)
    ring[:, 6:42, 8:56] = True
    ring[:, 14:34, 20:44] = False
    valid = torch.ones_like(food)
    return target, valid, food, ring, K


def test_silog_2x2_by_hand():
    pred = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    target = torch.tensor([[[1.0, 2.0], [4.0, math.nan]]])
    # d = (0, ln2, ln2): mean d = 2/3 ln2, mean d^2 = 2/3 ln2^2, loss = sqrt(2/3 - 0.5 * 4/9) ln2 = 2/3 ln2
    assert silog_loss(pred, target).item() == pytest.approx(2 / 3 * LN2, rel=1e-6)
    # food pixel (0, 0) weighted 3: weights (3, 1, 1): mean d = 2/5 ln2, mean d^2 = 2/5 ln2^2
    food = torch.tensor([[[True, False], [False, False]]])
    expected = math.sqrt(2 / 5 - 0.5 * 4 / 25) * LN2
    assert silog_loss(pred, target, food_mask=food, food_weight=3.0).item() == pytest.approx(
        expected, rel=1e-6
    )
    # the valid mask and max_depth drop pixels: only d = (0, ln2) left -> sqrt(1/2 - 1/8) ln2
    valid = torch.tensor([[[True, True], [False, True]]])
    assert silog_loss(pred, target, valid).item() == pytest.approx(math.sqrt(0.375) * LN2, rel=1e-6)
    assert silog_loss(pred, target, max_depth_m=3.0).item() == pytest.approx(math.sqrt(0.375) * LN2, rel=1e-6)


def test_silog_matches_the_official_formula_on_a_random_batch():
    generator = torch.Generator().manual_seed(0)
    target = 0.2 + torch.rand((3, 20, 30), generator=generator)
    pred = 0.2 + torch.rand((3, 20, 30), generator=generator)
    valid = torch.rand((3, 20, 30), generator=generator) > 0.3
    diff_log = torch.log(target[valid]) - torch.log(pred[valid])  # DAV2 metric_depth/util/loss.py
    official = torch.sqrt(torch.pow(diff_log, 2).mean() - 0.5 * torch.pow(diff_log.mean(), 2))
    assert silog_loss(pred, target, valid).item() == pytest.approx(official.item(), rel=1e-5)


def test_silog_per_image_averages_images_with_valid_pixels():
    pred = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]], [[1.0, 1.0]]])
    target = torch.tensor([[[1.0, 2.0]], [[1.0, 1.0]], [[math.nan, math.nan]]])
    # image 0: d = (0, ln2) -> sqrt(1/2 - 1/8) ln2; image 1: 0; image 2: no valid pixel, left out
    expected = math.sqrt(0.375) * LN2 / 2
    assert silog_loss(pred, target, per_image=True).item() == pytest.approx(expected, rel=1e-6)


def test_gradient_matching_by_hand_and_scale_invariance():
    target = torch.ones((1, 3, 3))
    pred = torch.ones((1, 3, 3))
    pred[0, 1, 1] = math.e  # residual 1 at the centre: 4 of the 12 neighbour pairs differ by 1
    assert gradient_matching_loss(pred, target, num_scales=1).item() == pytest.approx(4 / 12, rel=1e-6)
    # scale 2 (step 2) keeps pixels (0,0), (0,2), (2,0), (2,2): all residuals 0
    assert gradient_matching_loss(pred, target, num_scales=2).item() == pytest.approx(4 / 12 / 2, rel=1e-6)
    target, valid, _, _, _ = box_batch()
    assert gradient_matching_loss(2.5 * target, target, valid).item() == pytest.approx(0.0, abs=1e-6)


def test_plane_loss_of_a_shifted_table_by_hand():
    target, valid, food, ring, K = box_batch()
    assert plane_loss(target, target, valid, ring, K, food_mask=food).item() == pytest.approx(0.0, abs=1e-6)
    # whole scene 1 cm further: the predicted table is at 0.369 m, the reference at 0.359 m
    loss = plane_loss(target + 0.01, target, valid, ring, K, food_mask=food)
    assert loss.item() == pytest.approx(0.01 / 0.359, rel=1e-4)
    assert loss.item() == pytest.approx(0.027855, abs=1e-5)


def test_plane_loss_needs_the_numpy_fits_minimum_of_ring_pixels():
    target, valid, food, _, K = box_batch()
    pred = target.clone()
    pred[0] += 0.01  # only image 0 is off, by 1 cm
    ring = torch.zeros_like(food)
    ring[:, 2, :29] = True  # 29 valid ring pixels: below MIN_PLANE_PIXELS = 30, image left out
    assert plane_loss(pred, target, valid, ring, K).item() == 0.0
    ring[:, 3, :2] = True  # 31 pixels in two rows: image 0 counts, averaged with the exact image 1
    assert plane_loss(pred, target, valid, ring, K).item() == pytest.approx(0.01 / 0.359 / 2, rel=1e-3)


def test_volume_loss_by_hand():
    target, valid, food, ring, K = box_batch()
    assert volume_loss(target, target, valid, food, ring, K).item() == pytest.approx(0.0, abs=1e-6)
    # a prediction with the food flattened into the table has volume 0: loss = V_ref / (V_ref + 1 mL)
    per_pixel_ml = (0.359**3 - 0.329**3) / (3 * (FOCAL_PX / 10) ** 2) * 1e6
    ref_ml = 16 * 12 * per_pixel_ml
    assert ref_ml == pytest.approx(315.24, abs=0.01)
    flat = torch.full_like(target, TABLE_DEPTH_M)
    expected = ref_ml / (ref_ml + 1.0)
    assert volume_loss(flat, target, valid, food, ring, K).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss_name", ["silog", "grad", "plane", "volume"])
def test_one_sgd_step_lowers_each_loss(loss_name):
    target, valid, food, ring, K = box_batch()
    generator = torch.Generator().manual_seed(1)
    start = target * (1 + 0.05 * torch.randn(target.shape, generator=generator)) + 0.01
    pred = start.clone().requires_grad_(True)
    losses = {
        "silog": lambda p: silog_loss(p, target, valid, food_mask=food, food_weight=5.0),
        "grad": lambda p: gradient_matching_loss(p, target, valid),
        "plane": lambda p: plane_loss(p, target, valid, ring, K, food_mask=food),
        "volume": lambda p: volume_loss(p, target, valid, food, ring, K),
    }
    loss_fn = losses[loss_name]
    before = loss_fn(pred)
    before.backward()
    # one gradient-descent step of 1 cm (L2 over all pixels; about 0.1 mm per pixel)
    optimizer = torch.optim.SGD([pred], lr=0.01 / pred.grad.norm().item())
    optimizer.step()
    after = loss_fn(pred)
    assert before.item() > 0.02
    assert after.item() < 0.995 * before.item()


def degenerate_batches():
    target, valid, food, ring, K = box_batch(batch=2)
    empty = torch.zeros_like(food)
    yield "empty masks", target, valid, empty, empty, K
    yield "all-invalid target (NaN)", torch.full_like(target, math.nan), valid, food, ring, K
    yield "all-invalid target (0)", torch.zeros_like(target), valid, food, ring, K
    yield "valid mask all False", target, torch.zeros_like(valid), food, ring, K
    half = target.clone()
    half[0] = math.nan
    yield "one image invalid", half, valid, food, ring, K


@pytest.mark.parametrize("case", list(degenerate_batches()), ids=lambda case: case[0])
@pytest.mark.parametrize("pred_kind", ["zeros", "half"])
def test_composite_loss_finite_with_finite_gradients(case, pred_kind):
    _, target, valid, food, ring, K = case
    pred = torch.zeros_like(target) if pred_kind == "zeros" else torch.full_like(target, 0.5)
    pred.requires_grad_(True)
    loss_fn = CompositeDepthLoss(w_volume=0.2, food_weight=5.0)
    total, components = loss_fn(pred, target, valid, food, ring, K)
    assert torch.isfinite(total)
    assert all(torch.isfinite(value) for value in components.values())
    total.backward()
    assert torch.isfinite(pred.grad).all()


def test_composite_loss_all_empty_batch_is_exactly_zero():
    target, valid, food, ring, K = box_batch()
    pred = torch.full_like(target, 0.5, requires_grad=True)
    total, components = CompositeDepthLoss(w_volume=1.0)(
        pred, torch.full_like(target, math.nan), valid, food, ring, K
    )
    assert total.item() == 0.0
    assert {name: value.item() for name, value in components.items()} == {
        "silog": 0.0,
        "grad": 0.0,
        "plane": 0.0,
        "volume": 0.0,
    }


def test_composite_loss_is_the_weighted_sum_and_volume_starts_late():
    target, valid, food, ring, K = box_batch()
    pred = (target * 1.1).requires_grad_(True)
    loss_fn = CompositeDepthLoss(
        w_silog=1.0, w_grad=0.1, w_plane=0.05, w_volume=0.5, volume_loss_start_step=100
    )
    early, parts = loss_fn(pred, target, valid, food, ring, K, step=99)
    late, late_parts = loss_fn(pred, target, valid, food, ring, K, step=100)
    assert not any(value.requires_grad for value in parts.values())
    assert parts["plane"].item() == pytest.approx(0.1, rel=1e-4)  # table 10% further everywhere
    assert parts["volume"].item() > 0.05
    expected_early = parts["silog"].item() + 0.1 * parts["grad"].item() + 0.05 * parts["plane"].item()
    assert early.item() == pytest.approx(expected_early, rel=1e-6)
    assert late.item() == pytest.approx(early.item() + 0.5 * late_parts["volume"].item(), rel=1e-6)
    assert torch.allclose(torch.stack(list(parts.values())), torch.stack(list(late_parts.values())))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_composite_loss_under_cpu_autocast(dtype):
    if not torch.amp.autocast_mode.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast in this torch build")
    target, valid, food, ring, K = box_batch()
    weights = torch.nn.Parameter(torch.ones(1))
    loss_fn = CompositeDepthLoss(w_volume=0.2, food_weight=5.0)
    reference, reference_parts = loss_fn(target * 1.05, target, valid, food, ring, K)
    try:
        with torch.autocast("cpu", dtype=dtype):
            # a matmul under autocast hands the loss a low-precision prediction, as a model would
            pred = (torch.eye(target.shape[-1]) @ (target * 1.05 * weights).transpose(1, 2)).transpose(1, 2)
            total, parts = loss_fn(pred, target, valid, food, ring, K)
    except RuntimeError as error:
        pytest.skip(f"CPU autocast with {dtype} unsupported here: {error}")
    assert pred.dtype == dtype
    assert total.dtype == torch.float32
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(weights.grad).all()
    # the bf16/fp16 rounding of the prediction itself is the only difference
    assert parts["silog"].item() == pytest.approx(reference_parts["silog"].item(), abs=0.01)
    assert total.item() == pytest.approx(reference.item(), rel=0.2)


def test_shape_mismatch_names_the_argument():
    target, valid, _, ring, K = box_batch()
    with pytest.raises(ValueError, match="target_depth_m must have shape"):
        silog_loss(target[:, :40], target, valid)
    with pytest.raises(ValueError, match="K must have shape"):
        plane_loss(target, target, valid, ring, K[:1])
