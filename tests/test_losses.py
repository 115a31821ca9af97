"""Losses: hand-computed values, zero at the target, descent, and finiteness on degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch

from n5k_hf.geometry.torch_ops import backproject_torch, fit_plane_weighted_torch, pixel_rays_torch
from n5k_hf.losses import (
    CompositeDepthLoss,
    fit_ring_planes,
    gradient_matching_loss,
    plane_loss,
    silog_loss,
    valid_target_mask,
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
    assert math.isnan(parts["volume"].item())  # not active before step 100: not computed
    assert late_parts["volume"].item() > 0.05
    expected_early = parts["silog"].item() + 0.1 * parts["grad"].item() + 0.05 * parts["plane"].item()
    assert early.item() == pytest.approx(expected_early, rel=1e-6)
    assert late.item() == pytest.approx(early.item() + 0.5 * late_parts["volume"].item(), rel=1e-6)
    always_active = ["silog", "grad", "plane"]
    assert torch.allclose(
        torch.stack([parts[name] for name in always_active]),
        torch.stack([late_parts[name] for name in always_active]),
    )


def tilted_batch(height: int = 48, width: int = 64):
    """box_batch's scene on a different tilted table in each image (z = 0.359 + a x + b y), with NaN
    holes in the target, pixels dropped by the valid mask, and a noisy prediction."""
    _, valid, food, ring, K = box_batch(batch=2, height=height, width=width)
    rays = pixel_rays_torch(K, height, width)
    slopes = torch.tensor([[0.1, -0.05], [-0.08, 0.12]])
    # z = z0 + a x + b y on the ray Z (rx, ry, 1): Z = z0 / (1 - a rx - b ry)
    table_m = TABLE_DEPTH_M / (
        1 - slopes[:, 0, None, None] * rays[..., 0] - slopes[:, 1, None, None] * rays[..., 1]
    )
    scene_m = torch.where(food, table_m - 0.03, table_m)
    generator = torch.Generator().manual_seed(3)
    pred = scene_m * (1 + 0.05 * torch.randn(scene_m.shape, generator=generator)) + 0.01
    target = scene_m.clone()
    target[0, 10, 10:20] = math.nan  # ring pixels without depth
    target[1, 20, 30] = math.nan  # a food pixel without depth
    valid = valid.clone()
    valid[1, 20:24, 8:12] = False  # ring pixels left out by the valid mask
    return pred, target, valid, food, ring, K


def test_composite_loss_equals_the_weighted_standalone_losses():
    pred, target, valid, food, ring, K = tilted_batch()
    weights = {"silog": 1.0, "grad": 0.1, "plane": 0.05, "volume": 0.2}
    depth_range = {"min_depth_m": 0.01, "max_depth_m": 0.5}
    loss_fn = CompositeDepthLoss(
        w_silog=1.0, w_grad=0.1, w_plane=0.05, w_volume=0.2, food_weight=5.0, **depth_range
    )
    pred_composite = pred.clone().requires_grad_(True)
    total, components = loss_fn(pred_composite, target, valid, food, ring, K)
    p = pred.clone().requires_grad_(True)
    standalone = {
        "silog": silog_loss(p, target, valid, food_mask=food, food_weight=5.0, **depth_range),
        "grad": gradient_matching_loss(p, target, valid, **depth_range),
        "plane": plane_loss(p, target, valid, ring, K, food_mask=food, **depth_range),
        "volume": volume_loss(p, target, valid, food, ring, K, **depth_range),
    }
    assert all(value.item() > 0.01 for value in standalone.values())
    for name, value in standalone.items():
        assert components[name].item() == pytest.approx(value.item(), rel=1e-6), name
    expected = sum(weights[name] * value for name, value in standalone.items())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    expected.backward()
    torch.testing.assert_close(pred_composite.grad, p.grad, rtol=1e-5, atol=1e-9)
    # planes= reuses one fit for both terms: the same values
    planes = fit_ring_planes(p, target, valid, ring, K, **depth_range)
    reused_plane = plane_loss(p, target, valid, ring, K, food_mask=food, planes=planes, **depth_range)
    reused_volume = volume_loss(p, target, valid, food, ring, K, planes=planes, **depth_range)
    assert reused_plane.item() == pytest.approx(standalone["plane"].item(), rel=1e-7)
    assert reused_volume.item() == pytest.approx(standalone["volume"].item(), rel=1e-7)


def reference_plane_and_volume_losses(pred, target, valid, food, ring, K):
    """plane_loss and volume_loss written out on point clouds and (B, H, W, 3) rays in float64, for
    batches where every image has a ring and food and every ray meets both tables."""
    valid = valid_target_mask(target, valid)
    pred, target, K = pred.double(), target.double(), K.double()
    ring_weights = (ring & valid).double()
    pred_normal, pred_offset = fit_plane_weighted_torch(backproject_torch(pred, K), ring_weights)
    ref_points = backproject_torch(torch.where(valid, target, math.nan), K)
    ref_normal, ref_offset = fit_plane_weighted_torch(ref_points, ring_weights)
    rays = pixel_rays_torch(K, *pred.shape[1:])
    pred_table = -pred_offset[:, None, None] / (rays * pred_normal[:, None, None, :]).sum(dim=-1)
    ref_table = -ref_offset[:, None, None] / (rays * ref_normal[:, None, None, :]).sum(dim=-1)
    region = (ring | food).double()
    plane = (
        ((pred_table - ref_table).abs() / ref_table * region).sum(dim=(1, 2)) / region.sum(dim=(1, 2))
    ).mean()
    food_valid = food & valid
    per_pixel = 3 * K[:, 0, 0] * K[:, 1, 1] / 1e6  # mL per m^3 of Z_table^3 - Z^3

    def volume_ml(depth, table):
        slices = torch.where(
            food_valid, (table**3 - torch.where(food_valid, depth, 0.0) ** 3).clamp_min(0), 0.0
        )
        return slices.sum(dim=(1, 2)) / per_pixel

    ref_ml = volume_ml(target, ref_table)
    volume = ((volume_ml(pred, pred_table) - ref_ml).abs() / (ref_ml + 1.0)).mean()
    return plane, volume


def test_plane_and_volume_losses_match_the_point_cloud_reference():
    pred, target, valid, food, ring, K = tilted_batch()
    p = pred.clone().requires_grad_(True)
    p_reference = pred.double().requires_grad_(True)
    plane_reference, volume_reference = reference_plane_and_volume_losses(
        p_reference, target, valid, food, ring, K
    )
    plane = plane_loss(p, target, valid, ring, K, food_mask=food)
    volume = volume_loss(p, target, valid, food, ring, K)
    assert plane.item() == pytest.approx(plane_reference.item(), rel=2e-5)
    assert volume.item() == pytest.approx(volume_reference.item(), rel=2e-5)
    assert plane.item() > 0.005 and volume.item() > 0.05
    for loss, reference in ((plane, plane_reference), (volume, volume_reference)):
        (grad,) = torch.autograd.grad(loss, p)
        (grad_reference,) = torch.autograd.grad(reference, p_reference, retain_graph=True)
        scale = grad_reference.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(grad.double(), grad_reference, rtol=0, atol=1e-5 * scale)


def test_gradient_matching_value_and_gradient_match_the_autograd_reference():
    pred, target, valid, _, _, _ = tilted_batch()
    valid = valid_target_mask(target, valid)
    p = pred.clone().requires_grad_(True)
    p_reference = pred.double().requires_grad_(True)
    loss = gradient_matching_loss(p, target, valid)
    # the formula with autograd through slices and torch.where
    residual = torch.where(valid, torch.log(p_reference) - torch.log(torch.where(valid, target, 1.0)), 0.0)
    reference = 0.0
    for scale in range(4):
        r, v = residual[:, :: 2**scale, :: 2**scale], valid[:, :: 2**scale, :: 2**scale]
        pair_x, pair_y = v[:, :, 1:] & v[:, :, :-1], v[:, 1:, :] & v[:, :-1, :]
        sum_x = torch.where(pair_x, (r[:, :, 1:] - r[:, :, :-1]).abs(), 0.0).sum()
        sum_y = torch.where(pair_y, (r[:, 1:, :] - r[:, :-1, :]).abs(), 0.0).sum()
        reference = reference + (sum_x + sum_y) / (pair_x.sum() + pair_y.sum()) / 4
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert loss.item() > 0.01
    (grad,) = torch.autograd.grad(loss, p)
    (grad_reference,) = torch.autograd.grad(reference, p_reference)
    torch.testing.assert_close(
        grad.double(), grad_reference, rtol=1e-4, atol=1e-4 * grad_reference.abs().max().item()
    )


def test_inactive_terms_are_nan_and_left_out_of_the_total():
    pred, target, valid, food, ring, K = tilted_batch()
    pred.requires_grad_(True)
    loss_fn = CompositeDepthLoss(
        w_silog=1.0, w_grad=0.0, w_plane=0.05, w_volume=0.5, volume_loss_start_step=10
    )
    total, components = loss_fn(pred, target, valid, food, ring, K, step=9)
    assert math.isnan(components["grad"].item())  # weight 0
    assert math.isnan(components["volume"].item())  # starts at step 10
    expected = silog_loss(pred, target, valid) + 0.05 * plane_loss(
        pred, target, valid, ring, K, food_mask=food
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert components["silog"].item() == pytest.approx(silog_loss(pred, target, valid).item(), rel=1e-6)
    total.backward()
    assert torch.isfinite(pred.grad).all()
    # every weight 0: the total is exactly 0 and still differentiable; every component is NaN
    nothing, parts = CompositeDepthLoss(w_silog=0.0, w_grad=0.0, w_plane=0.0)(
        pred, target, valid, food, ring, K
    )
    assert nothing.item() == 0.0
    assert all(math.isnan(value.item()) for value in parts.values())
    nothing.backward()


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
