"""Batched, differentiable table-plane and volume geometry in torch (the model side of the geometry).

Same conventions as the numpy geometry in this package: camera frame x right, y down, z forward;
pixel (u, v) has its centre at (u, v); depth in metres with NaN (or 0) for invalid pixels; table
plane ``n . p + d = 0`` with unit normal ``n`` pointing towards the camera (``n_z < 0``), so
``height = n . p + d > 0`` above the table.

Every function takes a leading batch dimension, works on any device and floating dtype (computing
in the promoted dtype of its inputs), never returns NaN or inf for empty masks or for zero/NaN
depth, and gives finite gradients in those cases (masked values are replaced before any division,
log or power, so no ``0 * inf`` reaches the backward pass).

The functions that run in every training step (``fit_plane_to_depth_torch``,
``plane_depth_along_rays_torch``, ``frustum_volume_to_table_ml_torch``) work on the separable ray
slopes (``separable_rays_torch``, computable once per batch) instead of (B, H, W, 3) rays or
points, and mask with float arithmetic rather than ``torch.where``: on CPU a ``where``, a
``clamp_min`` backward or a ``bool -> float`` cast of a batch costs 5 to 20 float multiplications.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from n5k_hf.geometry.volume import ML_PER_M3

EMPTY_WEIGHT_THRESHOLD = 1e-6
"""A total plane-fit weight at or below this counts as "no points" (weights are usually 0/1 masks)."""

PLANE_FIT_RIDGE_M2 = 1e-8
"""Ridge added to the weighted x and y variances (m^2) of the plane fit: it keeps degenerate fits
(one point, collinear points) finite by pulling their slopes towards a fronto-parallel plane, and
biases real fits by ~1e-8 / var(x), i.e. 1e-4 relative on a slope for a ring spread of 1 cm."""

RAY_PARALLEL_THRESHOLD = 1e-6
"""A ray with ``n . ray`` above ``-RAY_PARALLEL_THRESHOLD`` (z = 1 rays) counts as never meeting the plane."""


def _intrinsics(
    K: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split K (B, 3, 3) into fx, fy, cx, cy, skew, each (B, 1, 1) for broadcasting over (B, H, W)."""
    if K.ndim != 3 or K.shape[-2:] != (3, 3):
        raise ValueError(f"K must have shape (B, 3, 3), got {tuple(K.shape)}")
    return K[:, (0, 1, 0, 1, 0), (0, 1, 2, 2, 1)][:, :, None, None].unbind(dim=1)


def float_mask_torch(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A mask as 0/1 (or, for a float mask, its values) in ``dtype``, same shape.

    bool masks go through a uint8 view: ``bool_mask.to(float)`` takes several times longer on CPU.
    """
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8).to(dtype)
    return mask.to(dtype)


def _finite_or_zero(depth_m: torch.Tensor) -> torch.Tensor:
    """depth_m with non-finite values replaced by 0; returned as is (no copy, no masked gradient)
    when its sum is finite, i.e. when every value is finite (the usual case for a prediction)."""
    if bool(torch.isfinite(depth_m.detach().sum())):
        return depth_m
    return torch.nan_to_num(depth_m, nan=0.0, posinf=0.0, neginf=0.0)


def pixel_rays_torch(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Ray direction of every pixel centre with z = 1: ``p = Z * ray`` for a pixel at depth Z.

    K: (B, 3, 3) upper-triangular camera matrix (skew honoured). Returns (B, H, W, 3).
    """
    fx, fy, cx, cy, skew = _intrinsics(K)
    u = torch.arange(width, device=K.device, dtype=K.dtype)[None, None, :]
    v = torch.arange(height, device=K.device, dtype=K.dtype)[None, :, None]
    y_over_z = (v - cy) / fy
    x_over_z = (u - cx - skew * y_over_z) / fx
    x_over_z, y_over_z = torch.broadcast_tensors(x_over_z, y_over_z)
    return torch.stack((x_over_z, y_over_z, torch.ones_like(x_over_z)), dim=-1)


class SeparableRays(NamedTuple):
    """The rays of ``pixel_rays_torch`` without a (B, H, W, 3) tensor: ``x/z = column_x + shear * y/z``.

    column_x: (B, 1, W) ``(u - cx) / fx``; row_y: (B, H, 1) ``y/z = (v - cy) / fy``; shear: (B, 1, 1)
    ``-skew / fx`` (0 without skew).
    """

    column_x: torch.Tensor
    row_y: torch.Tensor
    shear: torch.Tensor


def separable_rays_torch(K: torch.Tensor, height: int, width: int) -> SeparableRays:
    """The ray slopes of every pixel centre of an H x W image, in K's dtype (see ``SeparableRays``).

    K: (B, 3, 3). Compute them once per batch and pass them as ``rays=`` to the functions below.
    """
    fx, fy, cx, cy, skew = _intrinsics(K)
    u = torch.arange(width, device=K.device, dtype=K.dtype)
    v = torch.arange(height, device=K.device, dtype=K.dtype)
    return SeparableRays(column_x=(u - cx) / fx, row_y=(v[:, None] - cy) / fy, shear=-skew / fx)


def _check_depth_and_K(depth_m: torch.Tensor, K: torch.Tensor) -> None:
    if depth_m.ndim != 3:
        raise ValueError(f"depth_m must have shape (B, H, W), got {tuple(depth_m.shape)}")
    if K.ndim != 3 or K.shape[0] != depth_m.shape[0] or K.shape[-2:] != (3, 3):
        raise ValueError(
            f"K must have shape ({depth_m.shape[0]}, 3, 3) to match depth_m, got {tuple(K.shape)}"
        )


def _check_rays(rays: SeparableRays, batch: int, height: int, width: int) -> None:
    expected = ((batch, 1, width), (batch, height, 1), (batch, 1, 1))
    if tuple(tuple(t.shape) for t in rays) != expected:
        raise ValueError(
            f"rays must be separable_rays_torch(K, {height}, {width}) of a batch of {batch}: shapes "
            f"{expected}, got {tuple(tuple(t.shape) for t in rays)}"
        )


def backproject_torch(depth_m: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (metres) of every pixel: ``p = Z * K^-1 [u, v, 1]``.

    depth_m: (B, H, W), NaN/0 for invalid pixels (kept as NaN/0 points; the other functions of this
    module ignore them). K: (B, 3, 3). Returns (B, H, W, 3).
    """
    _check_depth_and_K(depth_m, K)
    dtype = torch.promote_types(depth_m.dtype, K.dtype)
    rays = pixel_rays_torch(K.to(dtype), depth_m.shape[1], depth_m.shape[2])
    return depth_m.to(dtype)[..., None] * rays


def _valid_points(points: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: point is finite and in front of the camera (the sum of x, y, z is finite
    exactly when all three are, short of a float overflow far beyond any camera distance)."""
    return torch.isfinite(points.sum(dim=-1)) & (points[..., 2] > 0)


def _valid_depth(depth_m: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: depth is finite and in front of the camera."""
    return torch.isfinite(depth_m) & (depth_m > 0)


def _fronto_parallel_fallback(
    normal: torch.Tensor,
    offset_m: torch.Tensor,
    has_points: torch.Tensor,
    depth_m: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the planes of images without points by ``n = (0, 0, -1)`` through their median valid depth.

    normal (B, 3), offset_m (B,), has_points (B,) bool, depth_m (B, H, W) and valid (B, H, W) bool
    (None: finite depths > 0). The median is computed only when some image needs it (it is the
    costliest step of a fit).
    """
    if bool(has_points.all()):
        return normal, offset_m
    if valid is None:
        valid = _valid_depth(depth_m)
    fallback_depth_m = torch.nan_to_num(
        torch.nanmedian(torch.where(valid, depth_m, torch.nan).flatten(1), dim=1).values, nan=0.0
    )
    fallback_normal = torch.zeros_like(normal)
    fallback_normal[:, 2] = -1
    normal = torch.where(has_points[:, None], normal, fallback_normal)
    offset_m = torch.where(has_points, offset_m, fallback_depth_m.to(offset_m.dtype))
    return normal, offset_m


def _plane_from_central_moments(
    means: torch.Tensor, covariances: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares plane ``z = a x + b y + c`` from weighted means and covariances.

    means: (B, 3) x, y, z; covariances: (B, 5) xx, yy, xy, xz, yz. Adds ``PLANE_FIT_RIDGE_M2`` to
    the x and y variances (the 2 x 2 system is then positive definite). Returns normal (B, 3)
    ``(a, b, -1) / norm`` and offset_m (B,) ``c / norm``.
    """
    ridge = PLANE_FIT_RIDGE_M2 * torch.eye(2, dtype=covariances.dtype, device=covariances.device)
    system = covariances[:, (0, 2, 2, 1)].view(-1, 2, 2) + ridge
    slopes = torch.linalg.solve_ex(system, covariances[:, 3:5]).result  # (B, 2): a, b
    intercept = means[:, 2] - (slopes * means[:, :2]).sum(dim=1)
    unnormalised = torch.nn.functional.pad(slopes, (0, 1), value=-1.0)
    norm = torch.linalg.vector_norm(unnormalised, dim=1)
    return unnormalised / norm[:, None], intercept / norm


def fit_plane_weighted_torch(
    points: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares table plane, differentiable with respect to points and weights.

    Fits ``z = a x + b y + c`` minimising ``sum w (a x + b y + c - z)^2`` (solved on weighted-centred
    coordinates, with the tiny ``PLANE_FIT_RIDGE_M2`` ridge on the slopes), then returns the plane as
    ``n . p + d = 0`` with ``n = (a, b, -1) / |(a, b, -1)|`` (so ``n_z < 0``: towards the camera) and
    ``d = c / |(a, b, -1)|``. Not robust: the weights must select table pixels (use the numpy RANSAC
    fit when outliers are expected). Depth residuals, not orthogonal distances, are minimised; for
    an overhead camera the two agree to second order in the tilt.

    points: (B, H, W, 3) camera-frame metres; non-finite points and points with z <= 0 get weight 0.
    weights: (B, H, W) non-negative (bool or float; negative values count as 0).
    Returns normal (B, 3) and offset_m (B,).

    Empty fallback: an image whose total weight is <= ``EMPTY_WEIGHT_THRESHOLD`` gets the
    fronto-parallel plane ``n = (0, 0, -1)`` through the median depth of its valid points (0 when it
    has none, a plane through the camera, on which every height is <= 0 and every volume 0).
    """
    if points.ndim != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, H, W, 3), got {tuple(points.shape)}")
    if weights.shape != points.shape[:-1]:
        raise ValueError(f"weights must have shape {tuple(points.shape[:-1])}, got {tuple(weights.shape)}")
    dtype = points.dtype if points.is_floating_point() else torch.float32
    valid = _valid_points(points)
    safe_points = torch.where(valid[..., None], points, torch.zeros((), dtype=dtype, device=points.device))
    w = torch.where(valid, weights.to(dtype).clamp_min(0), torch.zeros((), dtype=dtype, device=points.device))
    x, y, z = safe_points.flatten(1, 2).unbind(dim=-1)  # each (B, N)
    w = w.flatten(1)

    total_w = w.sum(dim=1)
    has_points = total_w > EMPTY_WEIGHT_THRESHOLD
    w_norm = w / torch.where(has_points, total_w, torch.ones_like(total_w))[:, None]
    mean_x, mean_y, mean_z = ((w_norm * c).sum(dim=1) for c in (x, y, z))
    dx, dy, dz = x - mean_x[:, None], y - mean_y[:, None], z - mean_z[:, None]
    w_dx, w_dy = w_norm * dx, w_norm * dy
    covariances = torch.stack(
        [
            (w_dx * dx).sum(dim=1),
            (w_dy * dy).sum(dim=1),
            (w_dx * dy).sum(dim=1),
            (w_dx * dz).sum(dim=1),
            (w_dy * dz).sum(dim=1),
        ],
        dim=1,
    )
    normal, offset_m = _plane_from_central_moments(torch.stack((mean_x, mean_y, mean_z), dim=1), covariances)
    return _fronto_parallel_fallback(normal, offset_m, has_points, points[..., 2], valid)


class _WeightedDepthMoments(torch.autograd.Function):
    """Weighted raw moments of the camera-frame points ``(x, y, z) = Z (x/z, y/z, 1)`` of a depth map.

    forward(depth_m (B, H, W), weights (B, H, W) bool or float, rays: the three ``SeparableRays``
    tensors) returns (B, 9) float64: ``sum w``, ``sum w z``, ``sum w x``, ``sum w y``,
    ``sum w x^2``, ``sum w y^2``, ``sum w x y``, ``sum w x z``, ``sum w y z`` with
    ``w = max(weights, 0)`` on finite depths > 0 (0 elsewhere). Each is a row or column sum of
    ``w Z`` or ``w Z^2`` times powers of the unsheared slopes (per-pixel products in the depth's
    dtype, then float64), the skew shear applied to the nine sums. The backward pass is written out
    (a handful of (B, H, W) products instead of autograd's per-operation graph); no gradient for the
    rays or for bool weights.
    """

    @staticmethod
    def forward(ctx, depth_m, weights, column_x, row_y, shear):
        safe_depth_m = torch.nan_to_num(depth_m, nan=0.0, posinf=0.0, neginf=0.0)
        in_front = safe_depth_m > 0
        if weights.dtype == torch.bool:
            w = float_mask_torch(weights & in_front, depth_m.dtype)
        else:
            w = torch.relu(weights.to(depth_m.dtype)) * float_mask_torch(in_front, depth_m.dtype)
        w_z = w * safe_depth_m
        w_z2 = w_z * safe_depth_m
        column = column_x[:, 0, :].double()
        row = row_y[:, :, 0].double()
        w_z_columns, w_z2_columns = w_z.sum(dim=1).double(), w_z2.sum(dim=1).double()  # (B, W)
        w_z_rows, w_z2_rows = w_z.sum(dim=2).double(), w_z2.sum(dim=2).double()  # (B, H)
        w_z2_u_rows = (w_z2 * column_x).sum(dim=2).double()  # (B, H)
        # u = Z (px - cx) / fx, the unsheared x: x = u + shear * y
        w_1, w_z, w_u, w_y, w_uu, w_yy, w_uy, w_uz, w_yz = (
            w.sum(dim=1).double().sum(dim=1),
            w_z_columns.sum(dim=1),
            (w_z_columns * column).sum(dim=1),
            (w_z_rows * row).sum(dim=1),
            (w_z2_columns * column * column).sum(dim=1),
            (w_z2_rows * row * row).sum(dim=1),
            (w_z2_u_rows * row).sum(dim=1),
            (w_z2_columns * column).sum(dim=1),
            (w_z2_rows * row).sum(dim=1),
        )
        s = shear.flatten().double()
        sums = torch.stack(
            (
                w_1,
                w_z,
                w_u + s * w_y,
                w_y,
                w_uu + s * (2 * w_uy + s * w_yy),
                w_yy,
                w_uy + s * w_yy,
                w_uz + s * w_yz,
                w_yz,
            ),
            dim=1,
        )
        ctx.save_for_backward(safe_depth_m, w, weights, column_x, row_y, shear)
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sums):
        safe_depth_m, w, weights, column_x, row_y, shear = ctx.saved_tensors
        # the shear's transpose: gradients of the nine unsheared sums
        s = shear.flatten().to(grad_sums.dtype)
        g_1, g_z, g_x, g_y, g_xx, g_yy, g_xy, g_xz, g_yz = grad_sums.unbind(dim=1)
        unsheared = torch.stack(
            (
                g_1,
                g_z,
                g_x,
                g_y + s * g_x,
                g_xx,
                g_yy + s * (s * g_xx + g_xy),
                g_xy + 2 * s * g_xx,
                g_xz,
                g_yz + s * g_xz,
            ),
            dim=1,
        )
        g = unsheared.to(safe_depth_m.dtype)[:, :, None, None].unbind(dim=1)  # nine (B, 1, 1)
        # d sums / d (w z) and d sums / d (w z^2), per pixel
        per_w_z = (g[1] + g[2] * column_x) + g[3] * row_y
        per_w_z2 = (
            (g[6] * row_y) * column_x + (g[4] * column_x + g[7]) * column_x + (g[5] * row_y + g[8]) * row_y
        )
        grad_depth = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_depth = w * (per_w_z + 2 * safe_depth_m * per_w_z2)
        if ctx.needs_input_grad[1]:
            grad_w = g[0] + safe_depth_m * (per_w_z + safe_depth_m * per_w_z2)
            # d w / d weights: 1 where the weight is positive and the depth valid
            grad_weights = grad_w * float_mask_torch((weights > 0) & (safe_depth_m > 0), grad_w.dtype)
        return grad_depth, grad_weights, None, None, None


def fit_plane_to_depth_torch(
    depth_m: torch.Tensor, K: torch.Tensor, weights: torch.Tensor, *, rays: SeparableRays | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fit_plane_weighted_torch(backproject_torch(depth_m, K), weights)`` without the point cloud.

    The same weighted least-squares plane (same ridge, same empty fallback), from the weighted
    moments of ``x = Z x/z``, ``y = Z y/z``, ``z = Z``: every moment is a sum of
    ``w Z^k (x/z)^i (y/z)^j`` and the ray slopes of a pinhole camera are separable (``x/z`` depends
    on the column, ``y/z`` on the row; a skew shears x by y), so each image needs only row and
    column sums of ``w Z`` and ``w Z^2``. Those are in depth_m's dtype (float32: the plane agrees
    with ``fit_plane_weighted_torch`` to float32 rounding); the moments are accumulated and centred
    in float64. Differentiable with respect to depth_m and float weights, not K.

    depth_m: (B, H, W) metres, non-finite or <= 0 depths get weight 0; K: (B, 3, 3);
    weights: (B, H, W) non-negative (bool or float; negative values count as 0); rays:
    ``separable_rays_torch(K, H, W)`` if already computed. Returns normal (B, 3) and offset_m (B,)
    in the promoted dtype of depth_m and K.
    """
    _check_depth_and_K(depth_m, K)
    if weights.shape != depth_m.shape:
        raise ValueError(f"weights must have shape {tuple(depth_m.shape)}, got {tuple(weights.shape)}")
    dtype = torch.promote_types(depth_m.dtype, K.dtype)
    if rays is None:
        rays = separable_rays_torch(K.to(dtype), *depth_m.shape[1:])
    _check_rays(rays, *depth_m.shape)
    if weights.dtype != torch.bool:
        weights = weights.to(dtype)
    rays = [t.to(dtype) for t in rays]
    sums = _WeightedDepthMoments.apply(depth_m.to(dtype), weights, *rays)
    total_w = sums[:, 0]
    has_points = total_w > EMPTY_WEIGHT_THRESHOLD
    means = sums[:, 1:] / torch.where(has_points, total_w, 1.0)[:, None]  # z, x, y, xx, yy, xy, xz, yz
    centre = means[:, (1, 2, 0)]  # x, y, z
    covariances = means[:, 3:] - centre[:, (0, 1, 0, 0, 1)] * centre[:, (0, 1, 1, 2, 2)]
    normal, offset_m = _plane_from_central_moments(centre, covariances)
    return _fronto_parallel_fallback(normal.to(dtype), offset_m.to(dtype), has_points, depth_m)


def height_above_plane_torch(
    points: torch.Tensor, normal: torch.Tensor, offset_m: torch.Tensor
) -> torch.Tensor:
    """Signed height (metres) of points above the plane: ``n . p + d`` (> 0 on the camera side).

    points: (B, H, W, 3); normal: (B, 3) unit; offset_m: (B,). Returns (B, H, W) (NaN where the
    point is NaN).
    """
    return (points * normal[:, None, None, :]).sum(dim=-1) + offset_m[:, None, None]


def plane_depth_along_rays_torch(
    K: torch.Tensor,
    normal: torch.Tensor,
    offset_m: torch.Tensor,
    height: int,
    width: int,
    *,
    rays: SeparableRays | None = None,
) -> torch.Tensor:
    """Depth Z (metres) at which each pixel's ray meets the plane: ``Z = -d / (n . ray)``.

    K: (B, 3, 3); normal: (B, 3); offset_m: (B,); rays: ``separable_rays_torch(K, height, width)``
    if already computed. Returns (B, H, W); 0 for rays that never meet the plane in front of the
    camera (``n . ray >= -RAY_PARALLEL_THRESHOLD`` or a plane behind the camera).
    """
    if rays is None:
        rays = separable_rays_torch(K, height, width)
    _check_rays(rays, normal.shape[0], height, width)
    normal_x, normal_y, normal_z = normal[:, :, None, None].unbind(dim=1)
    # n . ray = column term + row term, with x/z = column_x + shear * y/z
    column_term = normal_x * rays.column_x  # (B, 1, W)
    row_term = (normal_x * rays.shear + normal_y) * rays.row_y + normal_z  # (B, H, 1)
    # with n . ray < 0 the depth -d / (n . ray) is positive exactly when d > 0
    numerator = (-offset_m * float_mask_torch(offset_m > 0, offset_m.dtype))[:, None, None]
    largest_dot = column_term.amax(dim=(1, 2)) + row_term.amax(dim=(1, 2))  # the largest n . ray
    if bool((largest_dot < -RAY_PARALLEL_THRESHOLD).all()):  # every ray meets the plane
        return numerator / (column_term + row_term)
    normal_dot_ray = column_term + row_term
    meets = float_mask_torch(normal_dot_ray < -RAY_PARALLEL_THRESHOLD, normal_dot_ray.dtype)
    denominator = normal_dot_ray * meets + (meets - 1)  # n . ray where the ray meets the plane, else -1
    return numerator / denominator * meets


def frustum_volume_ml_torch(
    depth_m: torch.Tensor, mask: torch.Tensor, K: torch.Tensor, normal: torch.Tensor, offset_m: torch.Tensor
) -> torch.Tensor:
    """Food volume (mL) between the visible surface and the table plane, summed over pixel frusta.

    Each masked pixel contributes the slice of its viewing pyramid between the surface depth Z and
    the depth Z_table where its ray meets the plane: ``(Z_table^3 - Z^3) / (3 fx fy)``, clipped at 0
    (surface at or below the table). Invalid (NaN, <= 0) depths contribute 0 (the numpy
    ``integrate_volume_ml`` fills them from the nearest valid food pixel instead); on fully valid
    depth the two agree to float rounding (tests/test_torch_geometry.py).

    Accuracy (REFERENCE.md, ray-cast scenes): exact for surfaces that every ray leaves through the
    table (mounds, caps: no wall steeper than the viewing ray); biased HIGH on boxes (+13% to +22%)
    because the table region hidden behind a steep far wall is counted as food. The numpy
    ``integrate_volume_ml(..., method="heightmap")`` resamples heights on the table plane and is
    accurate on both (ray-cast 8x6x4 cm box, 192 mL, on a tilted table: this frustum gives 218.2 mL);
    use it for reporting and this one as a differentiable training signal. For a
    box of height h centred under the camera with its top at Z_t = Z_0 - h, the bias factor is
    ``(Z_0^3 - Z_t^3) / (3 Z_t^2 h)`` (+17% for Z_0 = 0.359 m, h = 5 cm).

    depth_m: (B, H, W) metres; mask: (B, H, W) bool or float in [0, 1] (a soft mask weights each
    pixel); K: (B, 3, 3); normal: (B, 3); offset_m: (B,). Returns (B,) millilitres.
    """
    _check_depth_and_K(depth_m, K)
    if mask.shape != depth_m.shape:
        raise ValueError(f"mask must have shape {tuple(depth_m.shape)}, got {tuple(mask.shape)}")
    dtype = torch.promote_types(depth_m.dtype, K.dtype)
    K = K.to(dtype)
    table_depth_m = plane_depth_along_rays_torch(K, normal.to(dtype), offset_m.to(dtype), *depth_m.shape[1:])
    return frustum_volume_to_table_ml_torch(depth_m.to(dtype), table_depth_m, mask, K)


def frustum_volume_to_table_ml_torch(
    depth_m: torch.Tensor, table_depth_m: torch.Tensor, mask: torch.Tensor, K: torch.Tensor
) -> torch.Tensor:
    """``frustum_volume_ml_torch`` with the table given as its depth along each pixel's ray.

    For callers that already have ``plane_depth_along_rays_torch`` of the plane. depth_m,
    table_depth_m: (B, H, W) metres (table 0 where the ray never meets it: no volume); mask:
    (B, H, W) bool or float in [0, 1]; K: (B, 3, 3). Returns (B,) millilitres.
    """
    _check_depth_and_K(depth_m, K)
    for name, tensor in (("table_depth_m", table_depth_m), ("mask", mask)):
        if tensor.shape != depth_m.shape:
            raise ValueError(f"{name} must have shape {tuple(depth_m.shape)}, got {tuple(tensor.shape)}")
    dtype = torch.promote_types(torch.promote_types(depth_m.dtype, table_depth_m.dtype), K.dtype)
    surface_depth_m = _finite_or_zero(depth_m.to(dtype))  # invalid pixels get weight 0 below
    if mask.dtype == torch.bool:
        weights = float_mask_torch(mask & (surface_depth_m > 0), dtype)
    else:
        weights = mask.to(dtype) * float_mask_torch(surface_depth_m > 0, dtype)
    slice_m3 = torch.relu(table_depth_m.to(dtype) ** 3 - surface_depth_m**3)
    fx_fy = (K[:, 0, 0] * K[:, 1, 1]).to(dtype)
    return (slice_m3 * weights).sum(dim=(1, 2)) * (ML_PER_M3 / 3) / fx_fy
