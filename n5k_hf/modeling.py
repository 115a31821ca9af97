"""Depth Anything V2 Metric models (transformers ``DepthAnythingForDepthEstimation``) and their processor.

The metric head is ``sigmoid(x) * config.max_depth``: depth in metres in (0, max_depth). transformers
5.x types ``max_depth`` as ``int`` (``@strict`` config): ``max_depth=20.0`` raises a validation error
and a ``config.json`` holding ``20.0`` fails to load. ``set_max_depth`` therefore accepts a float
from YAML, stores an integral value as ``int`` and rejects a fractional one (1.5 m) with a clear
error, since any stored float would make the saved model unloadable by ``from_pretrained``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import (
    AutoConfig,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTImageProcessorPil,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

DEFAULT_MODEL_ID = "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"
TINY_MODEL_CONFIG = "tiny"
ENCODER_PREFIX = "backbone."
"""Parameters whose names start with this are the DINOv2 encoder; the rest (neck, head) the decoder."""


class ModelLoadError(ValueError):
    """A model folder or hub id does not hold a usable DAV2-metric model."""


def max_depth_as_int(max_depth_m: float) -> int:
    """Validate a metric head range (metres) and return it as the ``int`` transformers 5.x requires.

    Raises ValueError for a non-finite, non-positive or fractional value (e.g. 1.5).
    """
    if isinstance(max_depth_m, bool) or not isinstance(max_depth_m, (int, float)):
        raise ValueError(f"max_depth must be a number of metres, got {max_depth_m!r}")
    if not math.isfinite(max_depth_m) or max_depth_m <= 0:
        raise ValueError(f"max_depth must be a positive finite number of metres, got {max_depth_m!r}")
    if float(max_depth_m) != int(max_depth_m):
        raise ValueError(
            f"max_depth={max_depth_m!r} is not a whole number of metres: transformers 5.x types "
            "DepthAnythingConfig.max_depth as int (a float fails validation and a saved config.json with a "
            "float cannot be loaded by from_pretrained); use an integer such as "
            f"{math.ceil(max_depth_m)}"
        )
    return int(max_depth_m)


def set_max_depth(config: DepthAnythingConfig, max_depth_m: float) -> DepthAnythingConfig:
    """Set ``config.max_depth`` (metres, validated by ``max_depth_as_int``) in place and return the config.

    A model built from the config scales its sigmoid head by this value. On a model that already
    exists use ``set_model_max_depth``: the head keeps its own copy.
    """
    config.max_depth = max_depth_as_int(max_depth_m)
    return config


def set_model_max_depth(model: DepthAnythingForDepthEstimation, max_depth_m: float) -> None:
    """Change the metric range of an existing model: its config (saved with it) and its head.

    On a pretrained model this RESCALES every prediction by ``new / old`` (the head is
    ``sigmoid * max_depth``), so fine-tuning must undo the change; keep the pretrained value unless
    the new range is needed.
    """
    set_max_depth(model.config, max_depth_m)
    model.head.max_depth = model.config.max_depth


def tiny_dav2_metric_config(max_depth: int = 1) -> DepthAnythingConfig:
    """A tiny DAV2-metric architecture (0.63 M parameters) for CPU tests and smoke runs.

    Same structure as the official models (4 DINOv2 feature maps, reassemble factors 4/2/1/0.5,
    reassemble_hidden_size = backbone hidden size): DINOv2 hidden 64, 4 layers, 4 heads, features
    from every layer; neck [32, 64, 64, 64]; fusion 32; head hidden 8.
    """
    backbone_config = Dinov2Config(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=False,
        layerscale_value=1.0,
    )
    return DepthAnythingConfig(
        backbone_config=backbone_config,
        patch_size=14,
        reassemble_hidden_size=64,
        neck_hidden_sizes=[32, 64, 64, 64],
        fusion_hidden_size=32,
        head_hidden_size=8,
        depth_estimation_type="metric",
        max_depth=max_depth_as_int(max_depth),
    )


def check_metric_config(config: object, model_name: str) -> None:
    """Raise ModelLoadError unless ``config`` is a DepthAnythingConfig with a metric head."""
    if not isinstance(config, DepthAnythingConfig):
        raise ModelLoadError(
            f"{model_name}: expected a Depth Anything config (model_type 'depth_anything'), got "
            f"{type(config).__name__} (model_type {getattr(config, 'model_type', None)!r})"
        )
    if config.depth_estimation_type != "metric":
        legacy = getattr(config, "depth_estimation", None)
        hint = (
            f" (its config has the legacy key depth_estimation={legacy!r}, which transformers ignores)"
            if legacy is not None
            else ""
        )
        raise ModelLoadError(
            f"{model_name}: depth_estimation_type is {config.depth_estimation_type!r}, not 'metric'{hint}: "
            "this is a relative-depth model (ReLU head, no metres); use a Depth-Anything-V2-Metric model "
            "or another revision"
        )


def load_depth_model(
    model_name_or_path: str = DEFAULT_MODEL_ID,
    *,
    revision: str | None = None,
    model_config: str | None = None,
    max_depth: float | None = None,
    seed: int = 0,
) -> DepthAnythingForDepthEstimation:
    """A DAV2-metric model from the hub, a local folder, or a fresh tiny random one.

    model_config="tiny": ``tiny_dav2_metric_config`` with random weights drawn from ``seed`` (the
    global RNG is left untouched); ``model_name_or_path`` is then only a name. Otherwise
    ``from_pretrained(model_name_or_path, revision=revision)`` (never remote code); the config is
    checked before the weights are read and must say ``depth_estimation_type == "metric"``.

    max_depth (metres, a whole number): overrides the head's range. On a pretrained model this
    rescales every prediction by ``max_depth / pretrained max_depth`` (head = sigmoid * max_depth).
    """
    if model_config is not None and model_config != TINY_MODEL_CONFIG:
        raise ValueError(f"model_config must be {TINY_MODEL_CONFIG!r} or None, got {model_config!r}")
    if model_config == TINY_MODEL_CONFIG:
        config = tiny_dav2_metric_config(max_depth=1 if max_depth is None else max_depth)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DepthAnythingForDepthEstimation(config)
        model.config.name_or_path = model_name_or_path
        return model

    try:
        config = AutoConfig.from_pretrained(model_name_or_path, revision=revision, trust_remote_code=False)
    except (OSError, ValueError, StrictDataclassError) as error:
        raise ModelLoadError(f"{model_name_or_path}: cannot load the model config: {error}") from error
    check_metric_config(config, model_name_or_path)
    if max_depth is not None:
        set_max_depth(config, max_depth)
    return DepthAnythingForDepthEstimation.from_pretrained(
        model_name_or_path, config=config, revision=revision, trust_remote_code=False
    )


def build_image_processor(
    size: int = 518, *, keep_aspect_ratio: bool = True, ensure_multiple_of: int = 14
) -> DPTImageProcessorPil:
    """The preprocessing of the official DAV2 models: bicubic resize, ImageNet mean/std, no padding.

    With keep_aspect_ratio the shorter side becomes ``size`` and both sides are rounded to a
    multiple of ``ensure_multiple_of`` (640x480 -> 686x518 for size 518). This is the PIL backend
    (torchvision is not a dependency); it saves as ``DPTImageProcessor``, so
    ``AutoImageProcessor``/``pipeline`` pick the torchvision backend where that is installed (same
    settings; resampling may differ in the last bits).
    """
    if size <= 0 or size % ensure_multiple_of:
        raise ValueError(f"size must be a positive multiple of {ensure_multiple_of}, got {size}")
    return DPTImageProcessorPil(
        do_resize=True,
        size={"height": size, "width": size},
        keep_aspect_ratio=keep_aspect_ratio,
        ensure_multiple_of=ensure_multiple_of,
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_pad=False,
    )


def save_model_for_pipeline(
    model: DepthAnythingForDepthEstimation, processor: DPTImageProcessorPil, output_dir: str | Path
) -> Path:
    """Save weights (safetensors), config and processor so that
    ``transformers.pipeline("depth-estimation", model=output_dir)`` works. Returns the folder."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    max_depth_as_int(model.config.max_depth)  # a float here would make the folder unloadable
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def encoder_decoder_parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split parameters into ``{"encoder": DINOv2 backbone, "decoder": neck + head}``.

    For separate learning rates (official DAV2: decoder LR = 10 x encoder LR). Frozen parameters
    are included (AdamW skips parameters without a gradient), so one optimiser serves both stages
    of ``freeze_encoder``.
    """
    groups: dict[str, list[nn.Parameter]] = {"encoder": [], "decoder": []}
    for name, parameter in model.named_parameters():
        groups["encoder" if name.startswith(ENCODER_PREFIX) else "decoder"].append(parameter)
    if not groups["encoder"]:
        raise ValueError(
            f"model has no parameter named {ENCODER_PREFIX}*: not a DepthAnythingForDepthEstimation"
        )
    return groups


def freeze_encoder(model: nn.Module, frozen: bool) -> None:
    """Freeze (``frozen=True``) or unfreeze the encoder; the decoder is left as it is."""
    for parameter in encoder_decoder_parameter_groups(model)["encoder"]:
        parameter.requires_grad_(not frozen)
