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

``CompositeDepthLoss`` computes what the terms share once per batch (the valid mask, the log-depth
residual, the two table planes of ``fit_ring_planes``); ``plane_loss`` and ``volume_loss`` accept the
planes through ``planes=`` for the same reason. Pixel masks are applied by multiplying with 0/1
float masks (``float_mask_torch``), not with ``torch.where``, which is many times slower on CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from n5k_hf.geometry.plane import MIN_PLANE_PIXELS
from n5k_hf.geometry.torch_ops import (
    fit_plane_to_depth_torch,
    float_mask_torch,
    frustum_volume_to_table_ml_torch,
    plane_depth_along_rays_torch,
    separable_rays_torch,
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
    valid = target_depth_m >= min_depth_m  # False for NaN and -inf
    valid &= target_depth_m <= max_depth_m if max_depth_m is not None else target_depth_m < math.inf
    if valid_mask is not None:
        valid &= _as_bool(valid_mask)
    return valid


def _log_residual(
    pred_depth_m: torch.Tensor, target_depth_m: torch.Tensor, valid: torch.Tensor, min_depth_m: float
) -> torch.Tensor:
    """(B, H, W) ``R = log(pred) - log(target)`` where valid (float 0/1 mask), 0 elsewhere; pred is
    clamped at min_depth_m (finite for 0)."""
    with torch.no_grad():
        log_target = torch.nan_to_num(torch.log(target_depth_m), nan=0.0, posinf=0.0, neginf=0.0) * valid
        clamp = not bool(pred_depth_m.amin() >= min_depth_m)
    # relu(p - m) + m is clamp_min(p, m) with a cheaper backward pass (skipped when nothing is below m)
    clamped_pred_m = torch.relu(pred_depth_m - min_depth_m) + min_depth_m if clamp else pred_depth_m
    return torch.log(clamped_pred_m) * valid - log_target


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


def _silog(
    log_residual: torch.Tensor,
    valid: torch.Tensor,
    food_mask: torch.Tensor | None,
    *,
    lambd: float,
    food_weight: float,
    per_image: bool,
) -> torch.Tensor:
    """``silog_loss`` from R = -d (B, H, W) (the loss is even in d) and the valid mask (B, H, W) float 0/1."""
    weights = valid
    if food_mask is not None and food_weight != 1:
        weights = weights * (1 + (food_weight - 1) * float_mask_torch(_as_bool(food_mask)))
    dims = (1, 2) if per_image else (0, 1, 2)
    total_weight = weights.sum(dim=dims)
    weighted_d = weights * log_residual
    mean_d = weighted_d.sum(dim=dims) / total_weight.clamp_min(1e-12)
    mean_d2 = (weighted_d * log_residual).sum(dim=dims) / total_weight.clamp_min(1e-12)
    loss = _safe_sqrt(mean_d2 - lambd * mean_d**2)
    if per_image:
        return _masked_mean_over_images(loss, total_weight > 0)
    return loss


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
    valid = float_mask_torch(
        valid_target_mask(target_depth_m, valid_mask, min_depth_m=min_depth_m, max_depth_m=max_depth_m)
    )
    log_residual = _log_residual(pred_depth_m, target_depth_m, valid, min_depth_m)
    return _silog(log_residual, valid, food_mask, lambd=lambd, food_weight=food_weight, per_image=per_image)


class _GradientMatching(torch.autograd.Function):
    """``gradient_matching_loss`` from R (B, H, W) float and the valid mask (B, H, W) bool.

    The backward pass adds ``sign(dR) / num_pairs`` of every valid pair into one gradient buffer
    instead of autograd's per-slice zero-filled copies; the pair signs are kept from the forward.
    """

    @staticmethod
    def forward(ctx, log_residual: torch.Tensor, valid: torch.Tensor, num_scales: int) -> torch.Tensor:
        total = log_residual.new_zeros(())
        signed_pairs = []  # per scale: (sign of dR on valid pairs, 0 elsewhere) along x and y
        pair_weights = []  # per scale: 1 / (number of valid pairs * num_scales)
        for scale in range(num_scales):
            step = 2**scale
            r = log_residual[:, ::step, ::step]
            v = valid[:, ::step, ::step]
            num_pairs = r.new_zeros(())
            scale_sum = r.new_zeros(())
            for difference, pair in (
                (r[:, :, 1:] - r[:, :, :-1], v[:, :, 1:] & v[:, :, :-1]),
                (r[:, 1:, :] - r[:, :-1, :], v[:, 1:, :] & v[:, :-1, :]),
            ):
                pair = float_mask_torch(pair, r.dtype)
                signed_pair = torch.sign(difference) * pair
                scale_sum = scale_sum + (difference * signed_pair).sum()  # sum of |dR| on valid pairs
                num_pairs = num_pairs + pair.sum()
                signed_pairs.append(signed_pair)
            pair_weight = 1 / (num_pairs.clamp_min(1) * num_scales)
            total = total + scale_sum * pair_weight
            pair_weights.append(pair_weight)
        ctx.num_scales = num_scales
        ctx.shape = log_residual.shape
        ctx.save_for_backward(*signed_pairs, *pair_weights)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        saved = ctx.saved_tensors
        signed_pairs, pair_weights = saved[: 2 * ctx.num_scales], saved[2 * ctx.num_scales :]
        grad = grad_total.new_zeros(ctx.shape)
        for scale in range(ctx.num_scales):
            step = 2**scale
            g = grad[:, ::step, ::step]  # a view: the in-place adds land in grad
            signed_x, signed_y = (
                s * (grad_total * pair_weights[scale]) for s in signed_pairs[2 * scale : 2 * scale + 2]
            )
            g[:, :, 1:] += signed_x
            g[:, :, :-1] -= signed_x
            g[:, 1:, :] += signed_y
            g[:, :-1, :] -= signed_y
        return grad, None, None


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
    log_residual = _log_residual(pred_depth_m, target_depth_m, float_mask_torch(valid), min_depth_m)
    return _GradientMatching.apply(log_residual, valid, num_scales)


@dataclass(frozen=True)
class RingPlanes:
    """The table planes of a batch, fitted on its valid ring pixels (``fit_ring_planes``).

    pred_normal (B, 3), pred_offset_m (B,): fitted on the prediction (in its graph);
    ref_normal (B, 3), ref_offset_m (B,): fitted on the target (no gradient);
    pred_table_depth_m, ref_table_depth_m (B, H, W): depth at which each pixel's ray meets the
    plane (0 where it never does, ``plane_depth_along_rays_torch``);
    has_ring (B,) bool: the image has at least ``MIN_PLANE_PIXELS`` valid ring pixels.
    """

    pred_normal: torch.Tensor
    pred_offset_m: torch.Tensor
    ref_normal: torch.Tensor
    ref_offset_m: torch.Tensor
    pred_table_depth_m: torch.Tensor
    ref_table_depth_m: torch.Tensor
    has_ring: torch.Tensor


def _fit_ring_planes(
    pred_depth_m: torch.Tensor,
    target_depth_m: torch.Tensor,
    valid: torch.Tensor,
    ring: torch.Tensor,
    K: torch.Tensor,
) -> RingPlanes:
    """``fit_ring_planes`` from the valid mask (B, H, W) bool and the ring (B, H, W) bool."""
    ring_pixels = ring & valid
    height, width = pred_depth_m.shape[1:]
    rays = separable_rays_torch(K, height, width)
    pred_normal, pred_offset_m = fit_plane_to_depth_torch(pred_depth_m, K, ring_pixels, rays=rays)
    with torch.no_grad():
        ref_normal, ref_offset_m = fit_plane_to_depth_torch(target_depth_m, K, ring_pixels, rays=rays)
        ref_table_depth_m = plane_depth_along_rays_torch(
            K, ref_normal, ref_offset_m, height, width, rays=rays
        )
    return RingPlanes(
        pred_normal=pred_normal,
        pred_offset_m=pred_offset_m,
        ref_normal=ref_normal,
        ref_offset_m=ref_offset_m,
        pred_table_depth_m=plane_depth_along_rays_torch(
            K, pred_normal, pred_offset_m, height, width, rays=rays
        ),
        ref_table_depth_m=ref_table_depth_m,
        has_ring=ring_pixels.sum(dim=(1, 2)) >= MIN_PLANE_PIXELS,
    )


@_float32_without_autocast
def fit_ring_planes(
    pred_depth_m: torch.Tensor,
    target_depth_m: torch.Tensor,
    valid_mask: torch.Tensor | None,
    ring_mask: torch.Tensor,
    K: torch.Tensor,
    *,
    min_depth_m: float = DEFAULT_MIN_DEPTH_M,
    max_depth_m: float | None = None,
) -> RingPlanes:
    """The table planes that ``plane_loss`` and ``volume_loss`` compare, fitted once for both.

    Weighted least-squares fits (``fit_plane_to_depth_torch``) on the same pixels of the
    prediction and of the target: the ring pixels with a valid target (``valid_target_mask``).
    Pass the result to both losses as ``planes=`` with the same inputs (and depth range) it was
    fitted on. Shapes: see the module docstring.
    """
    _check_shapes(
        pred_depth_m, target_depth_m=target_depth_m, valid_mask=valid_mask, ring_mask=ring_mask, K=K
    )
    valid = valid_target_mask(target_depth_m, valid_mask, min_depth_m=min_depth_m, max_depth_m=max_depth_m)
    return _fit_ring_planes(pred_depth_m, target_depth_m, valid, _as_bool(ring_mask), K)


def _plane(planes: RingPlanes, ring: torch.Tensor, food: torch.Tensor | None) -> torch.Tensor:
    """``plane_loss`` from the planes and the ring and food masks (B, H, W) bool."""
    with torch.no_grad():
        ref_table_m = planes.ref_table_depth_m
        region = float_mask_torch((ring if food is None else ring | food) & (ref_table_m > 0))
        num_pixels = region.sum(dim=(1, 2))
        # 1 / Z_ref on the region, 0 elsewhere (Z_ref = 0: clamped to the smallest normal float), over
        # the region's pixel count per image
        region = region / num_pixels.clamp_min(1)[:, None, None]
        pixel_weights = region / ref_table_m.clamp_min(torch.finfo(ref_table_m.dtype).tiny)
    per_image = ((planes.pred_table_depth_m - ref_table_m).abs() * pixel_weights).sum(dim=(1, 2))
    return _masked_mean_over_images(per_image, planes.has_ring & (num_pixels > 0))


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
    planes: RingPlanes | None = None,
) -> torch.Tensor:
    """How far the table plane of the prediction is from that of the target, as a relative depth.

    Both planes are weighted least-squares fits (``fit_ring_planes``; pass ``planes`` to reuse
    fits of the same inputs) on the same pixels: the ring pixels with a valid target. The loss is
    the mean, over the ring and food pixels (where the table sets the volume), of
    ``|Z_pred_plane - Z_ref_plane| / Z_ref_plane``, the depths at which each pixel's ray meets the
    two planes: it measures tilt and offset together, dimensionless like abs_rel (0.01 = the
    predicted table is 1% of the distance off). Averaged over images with at least
    ``MIN_PLANE_PIXELS`` valid ring pixels (the numpy ``fit_table_plane``'s minimum). Returns a scalar.
    """
    _check_shapes(
        pred_depth_m,
        target_depth_m=target_depth_m,
        valid_mask=valid_mask,
        ring_mask=ring_mask,
        food_mask=food_mask,
        K=K,
    )
    ring = _as_bool(ring_mask)
    if planes is None:
        valid = valid_target_mask(
            target_depth_m, valid_mask, min_depth_m=min_depth_m, max_depth_m=max_depth_m
        )
        planes = _fit_ring_planes(pred_depth_m, target_depth_m, valid, ring, K)
    return _plane(planes, ring, None if food_mask is None else _as_bool(food_mask))


def _volume(
    pred_depth_m: torch.Tensor,
    target_depth_m: torch.Tensor,
    valid: torch.Tensor,
    food: torch.Tensor,
    K: torch.Tensor,
    planes: RingPlanes,
    eps_ml: float,
) -> torch.Tensor:
    """``volume_loss`` from the valid mask and the food mask (B, H, W) bool and the planes."""
    food = food & valid
    pred_volume_ml = frustum_volume_to_table_ml_torch(pred_depth_m, planes.pred_table_depth_m, food, K)
    with torch.no_grad():
        ref_volume_ml = frustum_volume_to_table_ml_torch(target_depth_m, planes.ref_table_depth_m, food, K)
        has_food = float_mask_torch(food).sum(dim=(1, 2)) > 0
    relative = (pred_volume_ml - ref_volume_ml).abs() / (ref_volume_ml + eps_ml)
    return _masked_mean_over_images(relative, planes.has_ring & has_food)


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
    planes: RingPlanes | None = None,
) -> torch.Tensor:
    """Relative food-volume error ``|V_pred - V_ref| / (V_ref + eps_ml)``, averaged over images.

    Both volumes are ``frustum_volume_ml_torch`` over the same pixels (food pixels with a valid
    target); V_pred above the plane fitted on the predicted ring, V_ref above the plane fitted on the
    target ring (``fit_ring_planes``, computed here from the target, so it follows every crop and
    flip; pass ``planes`` to reuse fits of the same inputs). The frustum formula's bias on steep
    walls (REFERENCE.md) is shared by both. Images without food pixels or with fewer than
    ``MIN_PLANE_PIXELS`` valid ring pixels are left out. Returns a scalar.
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
    if planes is None:
        planes = _fit_ring_planes(pred_depth_m, target_depth_m, valid, _as_bool(ring_mask), K)
    return _volume(pred_depth_m, target_depth_m, valid, _as_bool(food_mask), K, planes, eps_ml)


class CompositeDepthLoss(nn.Module):
    """``w_silog * SiLog(food-weighted) + w_grad * gradient + w_plane * plane + w_volume * volume``.

    The volume term joins at ``step >= volume_loss_start_step`` (``step=None``: always). Terms with
    weight 0 or not yet active are not computed: their component is NaN (the training loop leaves
    non-finite components out of its logs). What the active terms share is computed once: the valid
    mask, the log residual (silog, grad), the ring planes (plane, volume); the total equals the weighted
    sum of the standalone losses. forward returns ``(total, components)``: total a float32 scalar
    with gradient; components ``{"silog", "grad", "plane", "volume"}`` detached scalars.
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
        if num_gradient_scales < 1:
            raise ValueError(f"num_gradient_scales must be >= 1, got {num_gradient_scales}")
        self.weights = {"silog": w_silog, "grad": w_grad, "plane": w_plane, "volume": w_volume}
        self.food_weight = food_weight
        self.volume_loss_start_step = volume_loss_start_step
        self.lambd = lambd
        self.depth_range = {"min_depth_m": min_depth_m, "max_depth_m": max_depth_m}
        self.num_gradient_scales = num_gradient_scales

    def active_terms(self, step: int | None = None) -> set[str]:
        """Names of the terms that enter the total at ``step`` (weight > 0; volume from its start step)."""
        volume_active = step is None or step >= self.volume_loss_start_step
        return {
            name
            for name, weight in self.weights.items()
            if weight > 0 and (name != "volume" or volume_active)
        }

    @_float32_without_autocast
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
        """Shapes: see the module docstring. Returns (total, detached components; NaN if inactive)."""
        _check_shapes(
            pred_depth_m,
            target_depth_m=target_depth_m,
            valid_mask=valid_mask,
            food_mask=food_mask,
            ring_mask=ring_mask,
            K=K,
        )
        active = self.active_terms(step)
        valid = valid_target_mask(target_depth_m, valid_mask, **self.depth_range)
        food = _as_bool(food_mask)
        values: dict[str, torch.Tensor] = {}
        if active & {"silog", "grad"}:
            valid_float = float_mask_torch(valid)
            log_residual = _log_residual(
                pred_depth_m, target_depth_m, valid_float, self.depth_range["min_depth_m"]
            )
            if "silog" in active:
                values["silog"] = _silog(
                    log_residual,
                    valid_float,
                    food,
                    lambd=self.lambd,
                    food_weight=self.food_weight,
                    per_image=False,
                )
            if "grad" in active:
                values["grad"] = _GradientMatching.apply(log_residual, valid, self.num_gradient_scales)
        if active & {"plane", "volume"}:
            ring = _as_bool(ring_mask)
            planes = _fit_ring_planes(pred_depth_m, target_depth_m, valid, ring, K)
            if "plane" in active:
                values["plane"] = _plane(planes, ring, food)
            if "volume" in active:
                values["volume"] = _volume(pred_depth_m, target_depth_m, valid, food, K, planes, eps_ml=1.0)
        total = pred_depth_m.new_zeros((), dtype=torch.float32)
        components: dict[str, torch.Tensor] = {}
        for name, weight in self.weights.items():
            if name in values:
                total = total + weight * values[name]
                components[name] = values[name].detach()
            else:
                components[name] = pred_depth_m.new_full((), math.nan, dtype=torch.float32)
        if not total.requires_grad and pred_depth_m.requires_grad:
            total = total + 0.0 * pred_depth_m.float().sum()  # keep backward() valid when every weight is 0
        return total, components
