"""Training losses for metric depth of food on a table: SiLog, gradient matching, table plane, volume.

Common inputs (batched, same size; the caller resizes the prediction to the target first):
pred_depth_m (B, H, W) metres (> 0, the metric head's output); target_depth_m (B, H, W) metres with
NaN or 0 for invalid pixels; valid_mask (B, H, W) bool (None: finite and positive target);
food_mask and ring_mask (B, H, W) bool (float masks are thresholded at 0.5; the ring is table
pixels around the food, not touching it); K (B, 3, 3) pixels, for this H x W.

Every loss computes in float32 with autocast disabled (so it is safe inside a bf16/fp16 autocast
region), returns a scalar tensor attached to ``pred_depth_m``'s graph, and is finite with finite
gradients for empty masks, all-invalid targets and zero predictions: pixels or images with nothing
to measure contribute 0 (an all-empty batch gives exactly 0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from n5k_hf.geometry.plane import MIN_PLANE_PIXELS
from n5k_hf.geometry.torch_ops import (
    backproject_torch,
    fit_plane_weighted_torch,
    frustum_volume_ml_torch,
    plane_depth_along_rays_torch,
)

DEFAULT_MIN_DEPTH_M = 1e-3

_Loss = TypeVar("_Loss", bound=Callable[..., torch.Tensor])


def _float32_without_autocast(loss_fn: _Loss) -> _Loss:
    """Run ``loss_fn`` with floating tensor arguments cast to float32 and autocast disabled."""

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"

        def cast(value):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.float()
            return value

        with torch.autocast(device_type=device_type, enabled=False):
            return loss_fn(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask > 0.5


def _check_shapes(pred_depth_m: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    if pred_depth_m.ndim != 3:
        raise ValueError(f"pred_depth_m must have shape (B, H, W), got {tuple(pred_depth_m.shape)}")
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        expected = (pred_depth_m.shape[0], 3, 3) if name == "K" else tuple(pred_depth_m.shape)
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} to match pred_depth_m, got {tuple(tensor.shape)} "
                "(resize the prediction to the target size before the loss)"
            )


def valid_target_mask(
    target_depth_m: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    *,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float | None = None,
) -> torch.Tensor:
    """(B, H, W) bool: valid_mask (if given) and a finite target within [min_depth_m, max_depth_m]."""
    valid = torch.isfinite(target_depth_m) & (target_depth_m >= min_depth_m)
    if max_depth_m is not None:
        valid &= target_depth_m <= max_depth_m
    if valid_mask is not None:
        valid &= _as_bool(valid_mask)
    return valid


def _log_ratio(
    pred_depth_m: torch.Tensor, target_depth_m: torch.Tensor, valid: torch.Tensor, min_depth_m: float
):
    """log(target) - log(pred) where valid, 0 elsewhere (pred clamped at min_depth_m: finite for 0)."""
    safe_target = torch.where(valid, target_depth_m, torch.ones_like(target_depth_m))
    log_ratio = torch.log(safe_target) - torch.log(pred_depth_m.clamp_min(min_depth_m))
    return torch.where(valid, log_ratio, torch.zeros_like(log_ratio))


def _safe_sqrt(value: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """sqrt with value 0 and gradient 0 at (and below) eps instead of an infinite gradient at 0."""
    positive = value > eps
    return torch.where(
        positive, torch.sqrt(torch.where(positive, value, torch.ones_like(value))), 0.0 * value
    )


def _masked_mean_over_images(per_image: torch.Tensor, included: torch.Tensor) -> torch.Tensor:
    """Mean of per_image (B,) over included (B,) bool images; 0 (still in the graph) when none is."""
    weights = included.to(per_image.dtype)
    per_image = torch.where(included, per_image, torch.zeros_like(per_image))
    return (per_image * weights).sum() / weights.sum().clamp_min(1)


@_float32_without_autocast
def silog_loss(
    pred_depth_m: torch.Tensor,
    target_depth_m: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    *,
    lambd: float = 0.5,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float | None = None,
    food_mask: torch.Tensor | None = None,
    food_weight: float = 1.0,
    per_image: bool = False,
) -> torch.Tensor:
    """Scale-invariant log loss of the official DAV2 metric training, optionally food-weighted.

    ``d = log(target) - log(pred)`` over valid pixels (``valid_target_mask``);
    ``loss = sqrt(mean_w(d^2) - lambd * mean_w(d)^2)`` with per-pixel weights ``w`` = 1 on table
    pixels and ``food_weight`` on food pixels (the table otherwise dominates every pixel average).
    per_image=False (the official one): means over all valid pixels of the batch pooled;
    per_image=True: one loss per image, averaged over the images that have valid pixels. With
    food_weight=1 and per_image=False this equals ``util/loss.py::SiLogLoss`` of
    DepthAnything/Depth-Anything-V2 (except that the sqrt has gradient 0, not inf, at 0).

    Shapes: see the module docstring. Returns a scalar.
    """
    _check_shapes(pred_depth_m, target_depth_m=target_depth_m, valid_mask=valid_mask, food_mask=food_mask)
    valid = valid_target_mask(target_depth_m, valid_mask, min_depth_m=min_depth_m, max_depth_m=max_depth_m)
    weights = valid.float()
    if food_mask is not None:
        weights = weights * (1 + (food_weight - 1) * _as_bool(food_mask).float())
    log_ratio = _log_ratio(pred_depth_m, target_depth_m, valid, min_depth_m)
    dims = (1, 2) if per_image else (0, 1, 2)
    total_weight = weights.sum(dim=dims)
    mean_d = (weights * log_ratio).sum(dim=dims) / total_weight.clamp_min(1e-12)
    mean_d2 = (weights * log_ratio**2).sum(dim=dims) / total_weight.clamp_min(1e-12)
    loss = _safe_sqrt(mean_d2 - lambd * mean_d**2)
    if per_image:
        return _masked_mean_over_images(loss, total_weight > 0)
    return loss


@_float32_without_autocast
def gradient_matching_loss(
    pred_depth_m: torch.Tensor,
    target_depth_m: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    *,
    num_scales: int = 4,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float | None = None,
) -> torch.Tensor:
    """Multi-scale gradient matching on log depth (MiDaS, Ranftl et al. 2020, on log-depth residuals).

    ``R = log(pred) - log(target)``; at scale s (every 2^s-th pixel in both directions) the loss is
    the mean of ``|R(right) - R(left)|`` and ``|R(below) - R(above)|`` over neighbour pairs whose two
    pixels are valid; the result is the mean over the scales (a scale with no valid pair adds 0).
    Zero for ``pred = c * target`` (any scale c): it penalises wrong edges and slopes, which SiLog
    averages away. Returns a scalar.
    """
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    _check_shapes(pred_depth_m, target_depth_m=target_depth_m, valid_mask=valid_mask)
    valid = valid_target_mask(target_depth_m, valid_mask, min_depth_m=min_depth_m, max_depth_m=max_depth_m)
    residual = -_log_ratio(pred_depth_m, target_depth_m, valid, min_depth_m)
    total = residual.new_zeros(())
    for scale in range(num_scales):
        step = 2**scale
        r = residual[:, ::step, ::step]
        v = valid[:, ::step, ::step]
        pair_x = v[:, :, 1:] & v[:, :, :-1]
        pair_y = v[:, 1:, :] & v[:, :-1, :]
        diff_x = torch.where(pair_x, (r[:, :, 1:] - r[:, :, :-1]).abs(), torch.zeros_like(r[:, :, 1:]))
        diff_y = torch.where(pair_y, (r[:, 1:, :] - r[:, :-1, :]).abs(), torch.zeros_like(r[:, 1:, :]))
        num_pairs = pair_x.sum() + pair_y.sum()
        total = total + (diff_x.sum() + diff_y.sum()) / num_pairs.clamp_min(1)
    return total / num_scales


def _ring_planes(
    pred_depth_m: torch.Tensor,
    target_depth_m: torch.Tensor,
    valid: torch.Tensor,
    ring: torch.Tensor,
    K: torch.Tensor,
):
    """Planes fitted on the same valid ring pixels of the prediction (differentiable) and of the
    target (reference, no gradient), and which images have enough ring pixels (B,) bool."""
    ring_weights = (ring & valid).float()
    pred_plane = fit_plane_weighted_torch(backproject_torch(pred_depth_m, K), ring_weights)
    with torch.no_grad():
        target_points = backproject_torch(torch.where(valid, target_depth_m, torch.nan), K)
        target_plane = fit_plane_weighted_torch(target_points, ring_weights)
    has_ring = ring_weights.sum(dim=(1, 2)) >= MIN_PLANE_PIXELS
    return pred_plane, target_plane, has_ring


@_float32_without_autocast
def plane_loss(
    pred_depth_m: torch.Tensor,
    target_depth_m: torch.Tensor,
    valid_mask: torch.Tensor | None,
    ring_mask: torch.Tensor,
    K: torch.Tensor,
    *,
    food_mask: torch.Tensor | None = None,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float | None = None,
) -> torch.Tensor:
    """How far the table plane of the prediction is from that of the target, as a relative depth.

    Both planes are weighted least-squares fits (``fit_plane_weighted_torch``) on the same pixels:
    the ring pixels with a valid target. The loss is the mean, over the ring and food pixels (where
    the table sets the volume), of ``|Z_pred_plane - Z_ref_plane| / Z_ref_plane``, the depths at which
    each pixel's ray meets the two planes: it measures tilt and offset together, dimensionless like
    abs_rel (0.01 = the predicted table is 1% of the distance off). Averaged over images with at
    least ``MIN_PLANE_PIXELS`` valid ring pixels (the numpy ``fit_table_plane``'s minimum). Returns a scalar.
    """
    _check_shapes(
        pred_depth_m,
        target_depth_m=target_depth_m,
        valid_mask=valid_mask,
        ring_mask=ring_mask,
        food_mask=food_mask,
        K=K,
    )
    valid = valid_target_mask(target_depth_m, valid_mask, min_depth_m=min_depth_m, max_depth_m=max_depth_m)
    (pred_normal, pred_offset), (ref_normal, ref_offset), has_ring = _ring_planes(
        pred_depth_m, target_depth_m, valid, _as_bool(ring_mask), K
    )
    height, width = pred_depth_m.shape[1:]
    pred_table_m = plane_depth_along_rays_torch(K, pred_normal, pred_offset, height, width)
    ref_table_m = plane_depth_along_rays_torch(K, ref_normal, ref_offset, height, width)
    region = _as_bool(ring_mask) if food_mask is None else _as_bool(ring_mask) | _as_bool(food_mask)
    region &= ref_table_m > 0
    relative = (pred_table_m - ref_table_m).abs() / torch.where(
        region, ref_table_m, torch.ones_like(ref_table_m)
    )
    relative = torch.where(region, relative, torch.zeros_like(relative))
    num_pixels = region.sum(dim=(1, 2))
    per_image = relative.sum(dim=(1, 2)) / num_pixels.clamp_min(1)
    return _masked_mean_over_images(per_image, has_ring & (num_pixels > 0))


@_float32_without_autocast
def volume_loss(
    pred_depth_m: torch.Tensor,
    target_depth_m: torch.Tensor,
    valid_mask: torch.Tensor | None,
    food_mask: torch.Tensor,
    ring_mask: torch.Tensor,
    K: torch.Tensor,
    *,
    eps_ml: float = 1.0,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float | None = None,
) -> torch.Tensor:
    """Relative food-volume error ``|V_pred - V_ref| / (V_ref + eps_ml)``, averaged over images.

    Both volumes are ``frustum_volume_ml_torch`` over the same pixels (food pixels with a valid
    target); V_pred above the plane fitted on the predicted ring, V_ref above the plane fitted on the
    target ring (computed here from the target, so it follows every crop and flip). The frustum
    formula's bias on steep walls (REFERENCE.md) is shared by both. Images without food pixels or
    with fewer than ``MIN_PLANE_PIXELS`` valid ring pixels are left out. Returns a scalar.
    """
    _check_shapes(
        pred_depth_m,
        target_depth_m=target_depth_m,
        valid_mask=valid_mask,
        food_mask=food_mask,
        ring_mask=ring_mask,
        K=K,
    )
    valid = valid_target_mask(target_depth_m, valid_mask, min_depth_m=min_depth_m, max_depth_m=max_depth_m)
    (pred_normal, pred_offset), (ref_normal, ref_offset), has_ring = _ring_planes(
        pred_depth_m, target_depth_m, valid, _as_bool(ring_mask), K
    )
    food = _as_bool(food_mask) & valid
    pred_volume_ml = frustum_volume_ml_torch(pred_depth_m, food, K, pred_normal, pred_offset)
    with torch.no_grad():
        safe_target = torch.where(valid, target_depth_m, torch.nan)
        ref_volume_ml = frustum_volume_ml_torch(safe_target, food, K, ref_normal, ref_offset)
    relative = (pred_volume_ml - ref_volume_ml).abs() / (ref_volume_ml + eps_ml)
    return _masked_mean_over_images(relative, has_ring & food.any(dim=(1, 2)))


class CompositeDepthLoss(nn.Module):
    """``w_silog * SiLog(food-weighted) + w_grad * gradient + w_plane * plane + w_volume * volume``.

    The volume term joins at ``step >= volume_loss_start_step`` (``step=None``: always). Components
    with weight 0 or not yet active are still computed (without gradient) for logging.
    forward returns ``(total, components)``: total a float32 scalar with gradient; components
    ``{"silog", "grad", "plane", "volume"}`` detached scalars.
    """

    def __init__(
        self,
        *,
        w_silog: float = 1.0,
        w_grad: float = 0.1,
        w_plane: float = 0.05,
        w_volume: float = 0.0,
        food_weight: float = 1.0,
        volume_loss_start_step: int = 0,
        lambd: float = 0.5,
        min_depth_m: float = DEFAULT_MIN_DEPTH_M,
        max_depth_m: float | None = None,
        num_gradient_scales: int = 4,
    ) -> None:
        super().__init__()
        for name, value in (
            ("w_silog", w_silog),
            ("w_grad", w_grad),
            ("w_plane", w_plane),
            ("w_volume", w_volume),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if food_weight <= 0:
            raise ValueError(f"food_weight must be > 0, got {food_weight}")
        self.weights = {"silog": w_silog, "grad": w_grad, "plane": w_plane, "volume": w_volume}
        self.food_weight = food_weight
        self.volume_loss_start_step = volume_loss_start_step
        self.lambd = lambd
        self.depth_range = {"min_depth_m": min_depth_m, "max_depth_m": max_depth_m}
        self.num_gradient_scales = num_gradient_scales

    def forward(
        self,
        pred_depth_m: torch.Tensor,
        target_depth_m: torch.Tensor,
        valid_mask: torch.Tensor | None,
        food_mask: torch.Tensor,
        ring_mask: torch.Tensor,
        K: torch.Tensor,
        step: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shapes: see the module docstring. Returns (total, detached components)."""
        terms: dict[str, Callable[[], torch.Tensor]] = {
            "silog": lambda: silog_loss(
                pred_depth_m,
                target_depth_m,
                valid_mask,
                lambd=self.lambd,
                food_mask=food_mask,
                food_weight=self.food_weight,
                **self.depth_range,
            ),
            "grad": lambda: gradient_matching_loss(
                pred_depth_m,
                target_depth_m,
                valid_mask,
                num_scales=self.num_gradient_scales,
                **self.depth_range,
            ),
            "plane": lambda: plane_loss(
                pred_depth_m,
                target_depth_m,
                valid_mask,
                ring_mask,
                K,
                food_mask=food_mask,
                **self.depth_range,
            ),
            "volume": lambda: volume_loss(
                pred_depth_m, target_depth_m, valid_mask, food_mask, ring_mask, K, **self.depth_range
            ),
        }
        volume_active = step is None or step >= self.volume_loss_start_step
        total = pred_depth_m.new_zeros((), dtype=torch.float32)
        components: dict[str, torch.Tensor] = {}
        for name, compute in terms.items():
            active = self.weights[name] > 0 and (name != "volume" or volume_active)
            if active:
                value = compute()
                total = total + self.weights[name] * value
            else:
                with torch.no_grad():
                    value = compute()
            components[name] = value.detach()
        if not total.requires_grad and pred_depth_m.requires_grad:
            total = total + 0.0 * pred_depth_m.float().sum()  # keep backward() valid when every weight is 0
        return total, components
