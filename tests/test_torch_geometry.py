"""Torch table-plane and frustum-volume geometry against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from n5k_hf.data.scenes import Box, Scene, SphericalCap, raycast_depth_m
from n5k_hf.geometry import (
    backproject,
    fit_table_plane,
    height_above_plane_m,
    integrate_volume_ml,
    nutrition5k_intrinsics,
    table_ring_mask,
)
from n5k_hf.geometry.torch_ops import (
    RAY_PARALLEL_THRESHOLD,
    backproject_torch,
    fit_plane_to_depth_torch,
    fit_plane_weighted_torch,
    float_mask_torch,
    frustum_volume_ml_torch,
    frustum_volume_to_table_ml_torch,
    height_above_plane_torch,
    pixel_rays_torch,
    plane_depth_along_rays_torch,
    separable_rays_torch,
)

FOCAL_PX = 465.14
TABLE_DEPTH_M = 0.359


def camera(batch: int = 1, *, cx: float = 319.5, cy: float = 239.5, dtype=torch.float64) -> torch.Tensor:
    K = torch.tensor([[FOCAL_PX, 0.0, cx], [0.0, FOCAL_PX, cy], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(batch, 3, 3).clone()


def plane_depth(
    K: torch.Tensor, normal, offset_m: float, height: int = 480, width: int = 640
) -> torch.Tensor:
    normal_t = torch.tensor(normal, dtype=K.dtype)
    normal_t = (normal_t / normal_t.norm()).expand(K.shape[0], 3)
    offset_t = torch.full((K.shape[0],), offset_m, dtype=K.dtype) / torch.tensor(normal, dtype=K.dtype).norm()
    return plane_depth_along_rays_torch(K, normal_t, offset_t, height, width)


def centred_box_scene(height_m: float = 0.05, half_width_px: int = 75, half_height_px: int = 50):
    """Fronto-parallel table at 0.359 m and a box centred under the camera whose top covers exactly
    (2 * half_width_px) x (2 * half_height_px) pixels (cx, cy on pixel corners)."""
    depth_m = torch.full((1, 480, 640), TABLE_DEPTH_M, dtype=torch.float64)
    mask = torch.zeros((1, 480, 640), dtype=torch.bool)
    rows = slice(240 - half_height_px, 240 + half_height_px)
    cols = slice(320 - half_width_px, 320 + half_width_px)
    depth_m[0, rows, cols] = TABLE_DEPTH_M - height_m
    mask[0, rows, cols] = True
    return depth_m, mask


def test_backproject_pixel_by_hand():
    K = camera(cx=320.0, cy=240.0)
    depth_m = torch.full((1, 480, 640), TABLE_DEPTH_M, dtype=torch.float64)
    points = backproject_torch(depth_m, K)
    assert points.shape == (1, 480, 640, 3)
    # pixel (u=420, v=140): 100 px right of and 100 px above the principal point
    expected = torch.tensor([100 / FOCAL_PX * 0.359, -100 / FOCAL_PX * 0.359, 0.359], dtype=torch.float64)
    torch.testing.assert_close(points[0, 140, 420], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(points[0, 240, 320], torch.tensor([0.0, 0.0, 0.359], dtype=torch.float64))


def test_backproject_keeps_invalid_depth_invalid():
    points = backproject_torch(torch.tensor([[[math.nan, 0.0]]]), camera(dtype=torch.float32))
    assert torch.isnan(points[0, 0, 0]).all()
    assert torch.equal(points[0, 0, 1], torch.zeros(3))


def test_fit_plane_recovers_tilted_plane():
    K = camera()
    normal = (0.08, -0.05, -1.0)
    depth_m = plane_depth(K, normal, 0.36)
    points = backproject_torch(depth_m, K)
    weights = torch.ones((1, 480, 640), dtype=torch.float64)
    weights[0, 100:380, 100:540] = 0.0  # a ring of table pixels only
    fitted_normal, fitted_offset = fit_plane_weighted_torch(points, weights)
    expected_normal = torch.tensor(normal, dtype=torch.float64) / math.sqrt(0.08**2 + 0.05**2 + 1)
    torch.testing.assert_close(fitted_normal[0], expected_normal, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        fitted_offset[0].item(), 0.36 / math.sqrt(0.08**2 + 0.05**2 + 1), rtol=0, atol=1e-7
    )
    heights = height_above_plane_torch(points, fitted_normal, fitted_offset)
    assert heights.abs().max().item() < 1e-7


def test_fit_plane_weights_pick_the_weighted_mean_depth():
    # interleaved points at 0.30 m (weight 1) and 0.40 m (weight 3): the LSQ plane is z = 0.375
    K = camera(cx=3.5, cy=3.5)
    depth_m = torch.full((1, 8, 8), 0.30, dtype=torch.float64)
    weights = torch.ones((1, 8, 8), dtype=torch.float64)
    depth_m[0, ::2, :] = 0.40
    weights[0, ::2, :] = 3.0
    # symmetric rows so the tilt cancels: swap the pattern in the lower half
    depth_m[0, 4:, :] = torch.flip(depth_m[0, :4, :], dims=[0])
    weights[0, 4:, :] = torch.flip(weights[0, :4, :], dims=[0])
    normal, offset_m = fit_plane_weighted_torch(backproject_torch(depth_m, K), weights)
    torch.testing.assert_close(
        normal[0], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64), rtol=0, atol=1e-9
    )
    assert offset_m.item() == pytest.approx(0.375, abs=1e-9)


def test_fit_plane_zero_weight_is_ignored():
    K = camera(cx=7.5, cy=7.5)
    depth_m = torch.full((1, 16, 16), 0.35, dtype=torch.float64)
    depth_m[0, :, 8:] = 0.10  # a different surface, weight 0
    weights = torch.zeros((1, 16, 16), dtype=torch.float64)
    weights[0, :, :8] = 1.0
    normal, offset_m = fit_plane_weighted_torch(backproject_torch(depth_m, K), weights)
    assert offset_m.item() == pytest.approx(0.35, abs=1e-9)
    assert normal[0, 2].item() == pytest.approx(-1.0, abs=1e-12)


def test_fit_plane_empty_weight_fallback_is_finite_with_finite_gradients():
    K = camera(batch=2, cx=3.5, cy=3.5)
    depth_m = torch.full((2, 8, 8), 0.30, dtype=torch.float64)
    depth_m[0, :4] = 0.50
    depth_m[0, 0, 0] = math.nan
    depth_m[1] = math.nan  # no valid point at all
    depth_m.requires_grad_(True)
    weights = torch.zeros((2, 8, 8), dtype=torch.float64)
    normal, offset_m = fit_plane_weighted_torch(backproject_torch(depth_m, K), weights)
    torch.testing.assert_close(normal, torch.tensor([[0.0, 0.0, -1.0]] * 2, dtype=torch.float64))
    # image 0: fronto-parallel plane at the median valid depth (31 x 0.5, 32 x 0.3: median 0.3)
    assert offset_m[0].item() == pytest.approx(0.30)
    assert offset_m[1].item() == 0.0
    (offset_m.sum() + normal.sum()).backward()
    assert torch.isfinite(depth_m.grad).all()


def test_fit_plane_gradcheck():
    K = camera(cx=2.0, cy=1.5)
    generator = torch.Generator().manual_seed(0)
    depth_m = (0.35 + 0.01 * torch.rand((1, 4, 5), generator=generator, dtype=torch.float64)).requires_grad_(
        True
    )
    weights = torch.rand((1, 4, 5), generator=generator, dtype=torch.float64).requires_grad_(True)

    def fit(depth, w):
        return fit_plane_weighted_torch(backproject_torch(depth, K), w)

    assert torch.autograd.gradcheck(fit, (depth_m, weights))


def test_frustum_volume_of_centred_box_matches_closed_form_and_its_bias():
    depth_m, mask = centred_box_scene()
    K = camera()
    normal = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    offset_m = torch.tensor([TABLE_DEPTH_M], dtype=torch.float64)
    volume_ml = frustum_volume_ml_torch(depth_m, mask, K, normal, offset_m)
    # every one of the 150 x 100 top pixels is a pyramid slice from 0.309 m to 0.359 m
    per_pixel_ml = (0.359**3 - 0.309**3) / (3 * FOCAL_PX**2) * 1e6
    assert volume_ml.item() == pytest.approx(15000 * per_pixel_ml, rel=1e-9)
    assert volume_ml.item() == pytest.approx(387.433, abs=1e-3)
    # the box itself: 150 px and 100 px at 0.309 m, 5 cm high -> 330.99 mL; frustum is 17.05% high
    box_ml = (150 * 0.309 / FOCAL_PX) * (100 * 0.309 / FOCAL_PX) * 0.05 * 1e6
    assert box_ml == pytest.approx(330.987, abs=1e-3)
    assert volume_ml.item() / box_ml == pytest.approx(1.17054, abs=1e-5)


def test_frustum_volume_with_plane_fitted_on_the_table_ring():
    depth_m, mask = centred_box_scene()
    K = camera()
    ring = torch.zeros_like(mask)
    ring[0, 150:330, 200:440] = True
    ring[0, 180:300, 235:405] = False  # the food and a 10 px margin are not ring
    normal, offset_m = fit_plane_weighted_torch(backproject_torch(depth_m, K), ring)
    volume_ml = frustum_volume_ml_torch(depth_m, mask, K, normal, offset_m)
    assert volume_ml.item() == pytest.approx(387.433, abs=1e-3)


def test_frustum_volume_of_spherical_cap_is_exact():
    # cap of radius 0.1 m, height 3 cm on the table under the camera: V = pi h^2 (3R - h) / 3 = 254.469 mL
    radius_m, cap_height_m = 0.1, 0.03
    K = camera(cx=320.0, cy=240.0)
    rays = torch.stack(
        torch.broadcast_tensors(
            (torch.arange(640, dtype=torch.float64)[None, :] - 320.0) / FOCAL_PX,
            (torch.arange(480, dtype=torch.float64)[:, None] - 240.0) / FOCAL_PX,
            torch.ones((1, 1), dtype=torch.float64),
        ),
        dim=-1,
    )
    centre_z = TABLE_DEPTH_M + radius_m - cap_height_m
    ray_dot_centre = rays[..., 2] * centre_z
    ray_norm2 = (rays * rays).sum(-1)
    discriminant = ray_dot_centre**2 - ray_norm2 * (centre_z**2 - radius_m**2)
    hit_depth = (ray_dot_centre - torch.sqrt(discriminant.clamp_min(0))) / ray_norm2
    on_cap = (discriminant > 0) & (hit_depth < TABLE_DEPTH_M)
    depth_m = torch.where(on_cap, hit_depth, torch.full_like(hit_depth, TABLE_DEPTH_M))[None]
    normal = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    offset_m = torch.tensor([TABLE_DEPTH_M], dtype=torch.float64)
    volume_ml = frustum_volume_ml_torch(depth_m, on_cap[None], K, normal, offset_m)
    exact_ml = math.pi * cap_height_m**2 * (3 * radius_m - cap_height_m) / 3 * 1e6
    assert exact_ml == pytest.approx(254.469, abs=1e-3)
    assert volume_ml.item() == pytest.approx(exact_ml, rel=5e-3)


def test_frustum_volume_on_tilted_table_counts_parallel_slab():
    # a tilted table and a slab whose surface is the table plane lifted by 2 cm: per pixel the slice
    # runs from the lifted plane to the table plane along the same ray
    K = camera()
    normal = (0.1, 0.05, -1.0)
    norm = math.sqrt(0.1**2 + 0.05**2 + 1)
    table_depth = plane_depth(K, normal, 0.36)
    lifted_depth = plane_depth(K, normal, 0.36 - 0.02 * norm)  # n.p + d = 0.02 on the slab surface
    mask = torch.zeros((1, 480, 640), dtype=torch.bool)
    mask[0, 200:280, 280:360] = True
    depth_m = torch.where(mask, lifted_depth, table_depth)
    normal_t = torch.tensor([normal], dtype=torch.float64) / norm
    offset_t = torch.tensor([0.36 / norm], dtype=torch.float64)
    heights = height_above_plane_torch(backproject_torch(depth_m, K), normal_t, offset_t)
    assert heights[0, 240, 320].item() == pytest.approx(0.02, abs=1e-12)
    volume_ml = frustum_volume_ml_torch(depth_m, mask, K, normal_t, offset_t)
    # pixel (320, 240) by hand: ray (0.5/f, 0.5/f, 1), Z_table = d / -(n.ray)
    ray = torch.tensor([0.5 / FOCAL_PX, 0.5 / FOCAL_PX, 1.0], dtype=torch.float64)
    z_table = 0.36 / norm / -(normal_t[0] @ ray).item()
    z_top = (0.36 - 0.02 * norm) / norm / -(normal_t[0] @ ray).item()
    assert table_depth[0, 240, 320].item() == pytest.approx(z_table, rel=1e-12)
    one_pixel_ml = frustum_volume_ml_torch(
        depth_m[:, 240:241, 320:321], mask[:, 240:241, 320:321], camera(cx=-0.5, cy=-0.5), normal_t, offset_t
    )
    assert one_pixel_ml.item() == pytest.approx((z_table**3 - z_top**3) / (3 * FOCAL_PX**2) * 1e6, rel=1e-9)
    # 6400 pixels of about 2 cm x (z/f)^2 each, with z ~ 0.35 m: about 72 mL
    assert 70.0 < volume_ml.item() < 76.0


def test_frustum_volume_ignores_invalid_depth_and_empty_masks():
    depth_m, mask = centred_box_scene()
    K = camera()
    normal = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    offset_m = torch.tensor([TABLE_DEPTH_M], dtype=torch.float64)
    full_ml = frustum_volume_ml_torch(depth_m, mask, K, normal, offset_m).item()
    holes = depth_m.clone()
    holes[0, 240, 320:330] = math.nan
    holes[0, 241, 320:330] = 0.0
    holey_ml = frustum_volume_ml_torch(holes, mask, K, normal, offset_m).item()
    assert holey_ml == pytest.approx(full_ml * (15000 - 20) / 15000, rel=1e-9)
    empty = frustum_volume_ml_torch(depth_m, torch.zeros_like(mask), K, normal, offset_m)
    assert empty.item() == 0.0


def test_frustum_volume_is_finite_with_finite_gradients_on_degenerate_input():
    K = camera(batch=3, cx=3.5, cy=3.5, dtype=torch.float32)
    depth_m = torch.full((3, 8, 8), 0.3)
    depth_m[1] = 0.0
    depth_m[2] = math.nan
    depth_m.requires_grad_(True)
    mask = torch.ones((3, 8, 8))
    mask[0] = 0.0
    points = backproject_torch(depth_m, K)
    normal, offset_m = fit_plane_weighted_torch(points, torch.zeros((3, 8, 8)))
    volume_ml = frustum_volume_ml_torch(depth_m, mask, K, normal, offset_m)
    assert torch.equal(volume_ml, torch.zeros(3))
    volume_ml.sum().backward()
    assert torch.isfinite(depth_m.grad).all()


def test_batch_and_dtype_agnostic():
    depth_m, mask = centred_box_scene()
    K = camera()
    normal = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    offset_m = torch.tensor([TABLE_DEPTH_M], dtype=torch.float64)
    box_ml = frustum_volume_ml_torch(depth_m, mask, K, normal, offset_m)
    flat = torch.full_like(depth_m, TABLE_DEPTH_M)
    batch_ml = frustum_volume_ml_torch(
        torch.cat([flat, depth_m]),
        torch.cat([mask, mask]),
        camera(batch=2),
        normal.repeat(2, 1),
        offset_m.repeat(2),
    )
    torch.testing.assert_close(batch_ml, torch.cat([torch.zeros(1, dtype=torch.float64), box_ml]))
    float32_ml = frustum_volume_ml_torch(depth_m.float(), mask, K.float(), normal.float(), offset_m.float())
    assert float32_ml.dtype == torch.float32
    assert float32_ml.item() == pytest.approx(box_ml.item(), rel=1e-4)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="K must have shape"):
        backproject_torch(torch.ones((2, 4, 4)), torch.eye(3)[None])
    with pytest.raises(ValueError, match="weights must have shape"):
        fit_plane_weighted_torch(torch.ones((1, 4, 4, 3)), torch.ones((1, 4, 5)))


def skewed_cameras(dtype=torch.float64) -> torch.Tensor:
    """Two 64 x 48 cameras with different principal points, the second with a skew of 3 px."""
    K = camera(batch=2, cx=31.5, cy=23.5, dtype=dtype)
    K[:, :2, :2] /= 10  # focal 46.514 px: the 64 x 48 image spans the Nutrition5k field of view
    K[1, 0, 2], K[1, 1, 2], K[1, 0, 1] = 28.0, 26.0, 3.0
    return K


def tilted_noisy_depth(K: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(2, 48, 64) depth of the tables z = 0.36 + 0.08 x - 0.05 y (image 0) and z = 0.3 - 0.1 x
    (image 1) along each ray, with 1 mm noise and invalid pixels (NaN, 0, negative)."""
    rays = pixel_rays_torch(K, 48, 64)
    slopes = torch.tensor([[0.08, -0.05, 0.36], [-0.1, 0.0, 0.3]], dtype=K.dtype)
    # z = c + a x + b y on the ray Z (rx, ry, 1): Z = c / (1 - a rx - b ry)
    depth_m = slopes[:, 2, None, None] / (
        1 - slopes[:, 0, None, None] * rays[..., 0] - slopes[:, 1, None, None] * rays[..., 1]
    )
    generator = torch.Generator().manual_seed(seed)
    depth_m = depth_m + 1e-3 * torch.randn(depth_m.shape, generator=generator, dtype=K.dtype)
    depth_m[0, 5, 7], depth_m[0, 6, 7], depth_m[1, 9, 9] = math.nan, 0.0, -0.2
    return depth_m


def test_separable_rays_are_the_pixel_rays():
    K = skewed_cameras()
    rays = separable_rays_torch(K, 48, 64)
    full = pixel_rays_torch(K, 48, 64)
    assert rays.column_x.shape == (2, 1, 64) and rays.row_y.shape == (2, 48, 1)
    torch.testing.assert_close(rays.column_x + rays.shear * rays.row_y, full[..., 0], rtol=0, atol=1e-15)
    torch.testing.assert_close(rays.row_y.expand(2, 48, 64), full[..., 1], rtol=0, atol=1e-15)
    # pixel (u=40, v=3) of camera 1: y/z = (3 - 26) / f, x/z = (40 - 28 - 3 y/z) / f
    focal_px = FOCAL_PX / 10
    y_over_z = (3 - 26) / focal_px
    assert full[1, 3, 40, 0].item() == pytest.approx((40 - 28 - 3 * y_over_z) / focal_px, rel=1e-12)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_fit_plane_to_depth_equals_the_point_cloud_fit(dtype, tolerance):
    K = skewed_cameras(dtype)
    depth_m = tilted_noisy_depth(K)
    generator = torch.Generator().manual_seed(1)
    weights = torch.rand((2, 48, 64), generator=generator, dtype=dtype) * 2 - 0.5  # some negative
    expected = fit_plane_weighted_torch(backproject_torch(depth_m, K), weights)
    fitted = fit_plane_to_depth_torch(depth_m, K, weights)
    for got, want in zip(fitted, expected, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=tolerance)
    # the fitted tables: 1 mm noise moves the slopes by ~1e-3 at most
    normal, offset_m = fitted
    slopes = -normal[:, :2] / normal[:, 2:]
    intercepts = -offset_m / normal[:, 2]
    torch.testing.assert_close(
        slopes, torch.tensor([[0.08, -0.05], [-0.1, 0.0]], dtype=dtype), rtol=0, atol=2e-3
    )
    torch.testing.assert_close(intercepts, torch.tensor([0.36, 0.3], dtype=dtype), rtol=0, atol=1e-3)
    bool_weights = weights > 0.5
    expected = fit_plane_weighted_torch(backproject_torch(depth_m, K), bool_weights)
    for got, want in zip(fit_plane_to_depth_torch(depth_m, K, bool_weights), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=tolerance)


def test_fit_plane_to_depth_gradcheck_with_skew_and_shared_rays():
    K = skewed_cameras()[:, :, :]
    generator = torch.Generator().manual_seed(2)
    depth_m = (0.35 + 0.01 * torch.rand((2, 4, 5), generator=generator, dtype=torch.float64)).requires_grad_(
        True
    )
    weights = (0.1 + torch.rand((2, 4, 5), generator=generator, dtype=torch.float64)).requires_grad_(True)
    rays = separable_rays_torch(K, 4, 5)

    def fit(depth, w):
        return fit_plane_to_depth_torch(depth, K, w, rays=rays)

    assert torch.autograd.gradcheck(fit, (depth_m, weights))
    with pytest.raises(ValueError, match="rays must be separable_rays_torch"):
        fit_plane_to_depth_torch(depth_m, K, weights, rays=separable_rays_torch(K, 5, 4))


def test_fit_plane_to_depth_empty_fallback_matches_the_point_cloud_fit():
    K = camera(batch=2, cx=3.5, cy=3.5)
    depth_m = torch.full((2, 8, 8), 0.30, dtype=torch.float64)
    depth_m[0, :4] = 0.50
    depth_m[0, 0, 0] = math.nan
    depth_m[1] = math.nan
    weights = torch.zeros((2, 8, 8), dtype=torch.float64)
    weights[1, 2, 2] = 1.0  # a weight on a NaN depth is no point either
    depth_m.requires_grad_(True)
    normal, offset_m = fit_plane_to_depth_torch(depth_m, K, weights)
    torch.testing.assert_close(normal, torch.tensor([[0.0, 0.0, -1.0]] * 2, dtype=torch.float64))
    assert offset_m.tolist() == pytest.approx([0.30, 0.0])  # median of 31 x 0.5 and 32 x 0.3; none
    (offset_m.sum() + normal.sum()).backward()
    assert torch.isfinite(depth_m.grad).all()


def test_plane_depth_along_rays_that_miss_the_plane():
    # the plane x - 0.5 z + 0.2 = 0 (normalised): along the ray (x/z, y/z, 1), Z = 0.2 / (0.5 - x/z),
    # met only where x/z < 0.5, i.e. columns u < 320 + 0.5 f = 552.57
    K = camera(cx=320.0, cy=240.0)
    norm = math.sqrt(1.25)
    normal = torch.tensor([[1.0, 0.0, -0.5]], dtype=torch.float64) / norm
    offset_m = torch.tensor([0.2], dtype=torch.float64) / norm
    depth_m = plane_depth_along_rays_torch(K, normal, offset_m, 480, 640)
    assert depth_m[0, 100, 320].item() == pytest.approx(0.4, rel=1e-12)
    assert depth_m[0, 7, 552].item() == pytest.approx(0.2 / (0.5 - 232 / FOCAL_PX), rel=1e-9)
    assert depth_m[0, 7, 552].item() == pytest.approx(163.207, abs=1e-3)  # almost parallel: 0.2 m / 0.001225
    assert (depth_m[:, :, 553:] == 0).all()
    rays = pixel_rays_torch(K, 480, 640)
    normal_dot_ray = (rays * normal[:, None, None, :]).sum(dim=-1)
    meets = normal_dot_ray < -RAY_PARALLEL_THRESHOLD
    expected = torch.where(meets, -offset_m / torch.where(meets, normal_dot_ray, -1.0), 0.0)
    torch.testing.assert_close(depth_m, expected, rtol=1e-12, atol=0)
    # the same plane behind the camera (d < 0) is met nowhere in front of it
    assert (plane_depth_along_rays_torch(K, normal, -offset_m, 480, 640) == 0).all()


def test_frustum_volume_to_table_depth_and_float_masks():
    depth_m, mask = centred_box_scene()
    K = camera()
    table_depth_m = torch.full_like(depth_m, TABLE_DEPTH_M)
    per_pixel_ml = (0.359**3 - 0.309**3) / (3 * FOCAL_PX**2) * 1e6
    volume_ml = frustum_volume_to_table_ml_torch(depth_m, table_depth_m, mask, K)
    assert volume_ml.item() == pytest.approx(15000 * per_pixel_ml, rel=1e-9)
    half_ml = frustum_volume_to_table_ml_torch(depth_m, table_depth_m, 0.5 * float_mask_torch(mask), K)
    assert half_ml.item() == pytest.approx(7500 * per_pixel_ml, rel=1e-9)
    with pytest.raises(ValueError, match="table_depth_m must have shape"):
        frustum_volume_to_table_ml_torch(depth_m, table_depth_m[:, 1:], mask, K)
    as_float = float_mask_torch(torch.tensor([True, False, True]))
    assert as_float.dtype == torch.float32 and as_float.tolist() == [1.0, 0.0, 1.0]
    assert float_mask_torch(torch.tensor([0.25]), torch.float64).tolist() == [0.25]


def render_scene(solids, tilt_deg: float = 0.0):
    """Ray-cast Nutrition5k-like scene (640x480, numpy geometry's K): depth, food mask, table ring."""
    scene = Scene(solids=tuple(solids), tilt_deg=tilt_deg, tilt_axis_deg=30.0)
    K = nutrition5k_intrinsics()
    depth_m, object_id = raycast_depth_m(scene, K, 480, 640)
    food = object_id >= 1
    ring = table_ring_mask(food) & (object_id == 0)
    return scene, K, depth_m.astype(np.float64), food, ring


@pytest.mark.parametrize(
    ("solid", "frustum_over_truth"),
    [
        # mound: frustum exact (measured 262.9775 mL for 262.9775 mL)
        (SphericalCap(radius_m=0.08, height_m=0.035, center_x_m=0.03, center_y_m=-0.02), (0.999, 1.001)),
        # box: the table hidden behind its far walls counts as food (measured 218.18 mL for 192 mL, +13.6%)
        (Box(size_x_m=0.08, size_y_m=0.06, size_z_m=0.04, center_x_m=0.05, yaw_deg=20.0), (1.12, 1.15)),
    ],
)
def test_torch_geometry_agrees_with_numpy_geometry(solid, frustum_over_truth):
    scene, K_np, depth_np, food, ring = render_scene([solid], tilt_deg=8.0)
    numpy_plane = fit_table_plane(depth_np, K_np, ring=ring)
    depth_t = torch.from_numpy(depth_np)[None]
    K_t = torch.from_numpy(K_np)[None]
    points_t = backproject_torch(depth_t, K_t)
    np.testing.assert_allclose(points_t[0].numpy(), backproject(depth_np, K_np), rtol=1e-12, atol=1e-15)

    normal_t, offset_t = fit_plane_weighted_torch(points_t, torch.from_numpy(ring)[None])
    np.testing.assert_allclose(normal_t[0].numpy(), numpy_plane.normal, atol=1e-6)
    assert offset_t.item() == pytest.approx(numpy_plane.offset_m, abs=1e-7)
    np.testing.assert_allclose(normal_t[0].numpy(), scene.table_plane().normal, atol=1e-6)
    np.testing.assert_allclose(
        height_above_plane_torch(points_t, normal_t, offset_t)[0].numpy(),
        height_above_plane_m(backproject(depth_np, K_np), numpy_plane),
        atol=1e-6,
    )

    food_t = torch.from_numpy(food)[None]
    torch_frustum_ml = frustum_volume_ml_torch(depth_t, food_t, K_t, normal_t, offset_t).item()
    numpy_frustum_ml = integrate_volume_ml(depth_np, food, K_np, "frustum", plane=numpy_plane)
    assert torch_frustum_ml == pytest.approx(numpy_frustum_ml, rel=1e-5)
    low, high = frustum_over_truth
    assert low < torch_frustum_ml / solid.volume_ml < high
