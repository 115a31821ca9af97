"""Official Depth Anything V2 metric checkpoints (``.pth`` of DepthAnything/Depth-Anything-V2,
``metric_depth``) to transformers ``DepthAnythingForDepthEstimation`` and back.

Official modules: ``pretrained`` (DINOv2: ``cls_token``, ``mask_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
ls2.gamma}``, ``norm``) and ``depth_head`` (``projects.i``, ``resize_layers.{0,1,3}``,
``scratch.layer{1..4}_rn``, ``scratch.refinenet{1..4}.{out_conv, resConfUnit{1,2}.conv{1,2}}``,
``scratch.output_conv1``, ``scratch.output_conv2.{0,2}``). ``refinenet4`` fuses first, so
``refinenet{1,2,3,4}`` become ``neck.fusion_stage.layers.{3,2,1,0}``; the fused ``qkv`` projection is
split in thirds (query, key, value). The HF attention parameter names are read from the model that
the config builds (they differ between transformers releases), so the mapping always targets the
installed version. ``max_depth`` is not stored in the official checkpoint (20 for the indoor
Hypersim models, 80 for the outdoor VKITTI2 ones): the caller gives it.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from n5k_hf.modeling import build_image_processor, max_depth_as_int, save_model_for_pipeline


class OfficialCheckpointError(ValueError):
    """An official checkpoint cannot be read or does not match the requested architecture."""


@dataclasses.dataclass(frozen=True)
class EncoderSize:
    """DINOv2 encoder and DPT decoder sizes of one official model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    out_indices: tuple[int, ...]
    neck_hidden_sizes: tuple[int, ...]
    fusion_hidden_size: int


ENCODER_SIZES = {
    "vits": EncoderSize(384, 12, 6, (3, 6, 9, 12), (48, 96, 192, 384), 64),
    "vitb": EncoderSize(768, 12, 12, (3, 6, 9, 12), (96, 192, 384, 768), 128),
    "vitl": EncoderSize(1024, 24, 16, (5, 12, 18, 24), (256, 512, 1024, 1024), 256),
}
OFFICIAL_HEAD_HIDDEN_SIZE = 32
REFINENET_TO_FUSION_LAYER = {1: 3, 2: 2, 3: 1, 4: 0}
_MAX_NAMES_IN_ERROR = 20

# (official, HF) suffixes inside one encoder block, apart from the fused qkv projection
_BLOCK_KEYS = (
    ("norm1.weight", "norm1.weight"),
    ("norm1.bias", "norm1.bias"),
    ("norm2.weight", "norm2.weight"),
    ("norm2.bias", "norm2.bias"),
    ("mlp.fc1.weight", "mlp.fc1.weight"),
    ("mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.fc2.weight", "mlp.fc2.weight"),
    ("mlp.fc2.bias", "mlp.fc2.bias"),
    ("ls1.gamma", "layer_scale1.lambda1"),
    ("ls2.gamma", "layer_scale2.lambda1"),
)
# HF attention parameter names (query, key, value, output projection) by transformers release
_ATTENTION_NAMING = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
    (
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
        "attention.output.dense",
    ),
)


def config_for_encoder(encoder: str, max_depth: float = 20) -> DepthAnythingConfig:
    """The HF config of the official DAV2-metric model with this encoder (vits, vitb or vitl)."""
    if encoder not in ENCODER_SIZES:
        raise OfficialCheckpointError(f"encoder must be one of {sorted(ENCODER_SIZES)}, got {encoder!r}")
    size = ENCODER_SIZES[encoder]
    backbone_config = Dinov2Config(
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        layerscale_value=1.0,
        out_indices=list(size.out_indices),
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone_config,
        patch_size=14,
        reassemble_hidden_size=size.hidden_size,
        neck_hidden_sizes=list(size.neck_hidden_sizes),
        fusion_hidden_size=size.fusion_hidden_size,
        head_hidden_size=OFFICIAL_HEAD_HIDDEN_SIZE,
        depth_estimation_type="metric",
        max_depth=max_depth_as_int(max_depth),
    )


def _hf_state_dict_shapes(config: DepthAnythingConfig) -> dict[str, torch.Size]:
    """Parameter names and shapes of the HF model for ``config`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _attention_names(hf_names: Mapping[str, object]) -> tuple[str, str, str, str]:
    for naming in _ATTENTION_NAMING:
        if f"backbone.encoder.layer.0.{naming[0]}.weight" in hf_names:
            return naming
    raise OfficialCheckpointError(
        "this transformers release names the DINOv2 attention parameters in a way this converter does not "
        f"know (expected one of {[naming[0] for naming in _ATTENTION_NAMING]})"
    )


def official_to_hf_key_map(
    config: DepthAnythingConfig,
) -> tuple[dict[str, str], dict[str, tuple[str, str, str]]]:
    """Key mapping for ``config``: ``{official: hf}`` for one-to-one tensors, and
    ``{official qkv key: (hf query, hf key, hf value)}`` for the fused attention projections."""
    hf_names = _hf_state_dict_shapes(config)
    query, key, value, output = _attention_names(hf_names)
    one_to_one = {
        "pretrained.cls_token": "backbone.embeddings.cls_token",
        "pretrained.mask_token": "backbone.embeddings.mask_token",
        "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
        "pretrained.norm.weight": "backbone.layernorm.weight",
        "pretrained.norm.bias": "backbone.layernorm.bias",
        "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
        "depth_head.scratch.output_conv1.bias": "head.conv1.bias",
        "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
        "depth_head.scratch.output_conv2.0.bias": "head.conv2.bias",
        "depth_head.scratch.output_conv2.2.weight": "head.conv3.weight",
        "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias",
    }
    fused: dict[str, tuple[str, str, str]] = {}
    for param in ("weight", "bias"):
        one_to_one[f"pretrained.patch_embed.proj.{param}"] = (
            f"backbone.embeddings.patch_embeddings.projection.{param}"
        )
    for block in range(config.backbone_config.num_hidden_layers):
        official, hf = f"pretrained.blocks.{block}.", f"backbone.encoder.layer.{block}."
        for official_suffix, hf_suffix in _BLOCK_KEYS:
            one_to_one[official + official_suffix] = hf + hf_suffix
        for param in ("weight", "bias"):
            one_to_one[f"{official}attn.proj.{param}"] = f"{hf}{output}.{param}"
            fused[f"{official}attn.qkv.{param}"] = tuple(
                f"{hf}{name}.{param}" for name in (query, key, value)
            )
    for stage in range(len(config.neck_hidden_sizes)):
        for param in ("weight", "bias"):
            one_to_one[f"depth_head.projects.{stage}.{param}"] = (
                f"neck.reassemble_stage.layers.{stage}.projection.{param}"
            )
            if f"neck.reassemble_stage.layers.{stage}.resize.{param}" in hf_names:  # factor 1: Identity
                one_to_one[f"depth_head.resize_layers.{stage}.{param}"] = (
                    f"neck.reassemble_stage.layers.{stage}.resize.{param}"
                )
        one_to_one[f"depth_head.scratch.layer{stage + 1}_rn.weight"] = f"neck.convs.{stage}.weight"
    for refinenet, layer in REFINENET_TO_FUSION_LAYER.items():
        official, hf = f"depth_head.scratch.refinenet{refinenet}.", f"neck.fusion_stage.layers.{layer}."
        for param in ("weight", "bias"):
            one_to_one[f"{official}out_conv.{param}"] = f"{hf}projection.{param}"
            for unit in (1, 2):
                for conv in (1, 2):
                    one_to_one[f"{official}resConfUnit{unit}.conv{conv}.{param}"] = (
                        f"{hf}residual_layer{unit}.convolution{conv}.{param}"
                    )
    mapped = set(one_to_one.values()) | {name for names in fused.values() for name in names}
    if mapped != set(hf_names):
        raise OfficialCheckpointError(
            "the official key map does not cover this transformers model: unmapped HF parameters "
            f"{_preview(set(hf_names) - mapped)}, mapped to nothing {_preview(mapped - set(hf_names))}"
        )
    return one_to_one, fused


def _preview(names: set[str]) -> str:
    listed = sorted(names)
    more = f" and {len(listed) - _MAX_NAMES_IN_ERROR} more" if len(listed) > _MAX_NAMES_IN_ERROR else ""
    return "[" + ", ".join(listed[:_MAX_NAMES_IN_ERROR]) + "]" + more


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DepthAnythingConfig
) -> dict[str, torch.Tensor]:
    """Official DAV2 state dict (keys as in the ``.pth``) -> HF ``DepthAnythingForDepthEstimation`` one.

    Raises OfficialCheckpointError naming every missing and unexpected official key and every
    tensor whose shape does not fit ``config`` (e.g. the wrong ``encoder``).
    """
    one_to_one, fused = official_to_hf_key_map(config)
    expected = set(one_to_one) | set(fused)
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise OfficialCheckpointError(
            f"checkpoint keys do not match the official DAV2 layout for this encoder: missing {_preview(missing)}; "
            f"unexpected {_preview(unexpected)}"
        )
    hf_shapes = _hf_state_dict_shapes(config)
    converted: dict[str, torch.Tensor] = {}
    for official_key, hf_key in one_to_one.items():
        converted[hf_key] = state_dict[official_key]
    for official_key, hf_keys in fused.items():
        tensor = state_dict[official_key]
        if tensor.shape[0] % 3:
            raise OfficialCheckpointError(
                f"{official_key}: first dimension {tensor.shape[0]} is not divisible by 3"
            )
        for hf_key, part in zip(hf_keys, torch.chunk(tensor, 3, dim=0)):
            converted[hf_key] = part.clone()
    mismatched = {
        f"{key} {tuple(tensor.shape)} != {tuple(hf_shapes[key])}"
        for key, tensor in converted.items()
        if tensor.shape != hf_shapes[key]
    }
    if mismatched:
        raise OfficialCheckpointError(
            f"checkpoint tensor shapes do not fit this encoder (HF name: checkpoint != expected): {_preview(mismatched)}"
        )
    return converted


def hf_to_official_state_dict(
    hf_state_dict: Mapping[str, torch.Tensor], config: DepthAnythingConfig
) -> dict[str, torch.Tensor]:
    """The inverse of ``convert_official_state_dict``: HF names -> official names, qkv fused again."""
    one_to_one, fused = official_to_hf_key_map(config)
    official = {official_key: hf_state_dict[hf_key].clone() for official_key, hf_key in one_to_one.items()}
    for official_key, hf_keys in fused.items():
        official[official_key] = torch.cat([hf_state_dict[hf_key] for hf_key in hf_keys], dim=0)
    return official


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official ``.pth`` safely (``weights_only=True``) and unwrap it to a flat state dict.

    Accepts a bare state dict, one wrapped as ``{"model": ...}`` (or ``"state_dict"``), and keys
    with a ``module.`` prefix (DDP). Raises OfficialCheckpointError naming the file otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: no such checkpoint file")
    if path.suffix != ".pth":
        raise OfficialCheckpointError(
            f"{path}: expected an official .pth checkpoint, got a {path.suffix or 'suffix-less'} file"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise OfficialCheckpointError(f"{path}: cannot be read as a PyTorch checkpoint: {error}") from error
    for wrapper_key in ("model", "state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper_key), Mapping):
            loaded = loaded[wrapper_key]
            break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise OfficialCheckpointError(f"{path}: does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def convert_official_checkpoint(
    checkpoint_path: str | Path, encoder: str, output_dir: str | Path, *, max_depth: float = 20
) -> Path:
    """Convert an official DAV2-metric ``.pth`` to a folder that ``from_pretrained`` and
    ``pipeline("depth-estimation")`` load (safetensors, config, official 518 processor)."""
    config = config_for_encoder(encoder, max_depth)
    state_dict = convert_official_state_dict(load_official_checkpoint(checkpoint_path), config)
    with torch.device("meta"):  # no random initialisation of weights that are replaced anyway
        model = DepthAnythingForDepthEstimation(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.eval()
    return save_model_for_pipeline(model, build_image_processor(518), output_dir)
