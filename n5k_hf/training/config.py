"""Typed configuration of the fine-tuning recipe: YAML gives defaults, CLI flags override them.

``recipes/finetune.py --config recipe.yaml --learning_rate=1e-5`` reads the YAML, checks every key
against the dataclasses below (an unknown key is an error naming the key and the file), then parses
YAML values and CLI flags together through :class:`transformers.HfArgumentParser`, so both are
converted and type-checked by the same code (``learning_rate: 1e-4`` works although YAML reads it
as a string, and ``learning_rate: fast`` fails naming the key).

Keys use the Hugging Face names (``model_name_or_path``, ``per_device_train_batch_size``,
``checkpointing_steps`` ...). The groups mirror the sections of the recipe YAMLs.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from n5k_hf.modeling import DEFAULT_MODEL_ID

NULL_STRINGS = ("None", "none", "null")


class ConfigError(ValueError):
    """A recipe file or a flag is invalid; the message names the file or key."""


@dataclasses.dataclass
class ModelArguments:
    model_name_or_path: str = dataclasses.field(
        default=DEFAULT_MODEL_ID, metadata={"help": "Hub id or local folder of a DAV2-metric model."}
    )
    model_revision: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit)."}
    )
    model_config: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "'tiny' builds a small randomly initialised DAV2-metric model instead of loading one."
        },
    )
    max_depth: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Override the metric head's range in metres (head = sigmoid * max_depth). transformers 5.x "
            "types it int, so only integral values are accepted (2 or 2.0, not 1.5)."
        },
    )


@dataclasses.dataclass
class DataArguments:
    dataset_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Folder written by scripts/convert_nutrition5k.py, or a Hub dataset id."},
    )
    dataset_revision: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    image_size: int = dataclasses.field(
        default=518,
        metadata={
            "help": "Shorter side of the model input after an aspect-keeping resize; a multiple of 14."
        },
    )
    crop_scale_min: float = dataclasses.field(
        default=0.6, metadata={"help": "Smallest area share of RandomResizedCrop (1.0 disables cropping)."}
    )
    color_jitter: float = dataclasses.field(
        default=0.2, metadata={"help": "Brightness/contrast/saturation jitter."}
    )
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    dataloader_num_workers: int = 0


@dataclasses.dataclass
class LossArguments:
    w_silog: float = 1.0
    w_grad: float = 0.1
    w_plane: float = 0.05
    w_volume: float = 0.1
    food_weight: float = dataclasses.field(
        default=5.0, metadata={"help": "Weight of food pixels relative to table pixels in the SiLog term."}
    )
    volume_loss_start_step: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Optimiser step at which the volume loss switches on; None: at the start of stage 2."
        },
    )
    min_depth: float = 1e-3


@dataclasses.dataclass
class OptimizationArguments:
    output_dir: str = "outputs/finetune"
    seed: int = 42
    num_train_epochs: int = 12
    max_train_steps: int | None = dataclasses.field(
        default=None, metadata={"help": "Total optimiser steps; overrides num_train_epochs when set."}
    )
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = dataclasses.field(
        default=1e-4, metadata={"help": "Decoder (neck + head) learning rate."}
    )
    encoder_lr_ratio: float = dataclasses.field(
        default=0.1,
        metadata={
            "help": "Encoder LR = learning_rate * encoder_lr_ratio (official DAV2: decoder 10x encoder)."
        },
    )
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler_type: str = dataclasses.field(default="poly", metadata={"help": "poly, cosine or linear."})
    poly_power: float = 0.9
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_consecutive_nonfinite_steps: int = dataclasses.field(
        default=10, metadata={"help": "Stop with a checkpoint after this many non-finite losses in a row."}
    )


@dataclasses.dataclass
class StageArguments:
    stage1_epochs: int = dataclasses.field(
        default=4,
        metadata={"help": "Epochs of stage 1 (encoder frozen); the rest of the run is stage 2 (all layers)."},
    )
    stage2_lr_scale: float = dataclasses.field(
        default=0.5, metadata={"help": "Stage 2 learning rates = stage 1 x this."}
    )
    early_stopping_patience: int | None = dataclasses.field(
        default=3,
        metadata={"help": "Stop when validation volume MAPE has not improved for this many epochs."},
    )


@dataclasses.dataclass
class LoggingArguments:
    report_to: str = dataclasses.field(
        default="none",
        metadata={"help": "none, all, or comma-separated trackers: tensorboard, wandb, trackio, ..."},
    )
    logging_steps: int = 10
    checkpointing_steps: str | None = dataclasses.field(
        default="epoch", metadata={"help": "An integer (every N optimiser steps), 'epoch', or None."}
    )
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = dataclasses.field(
        default=None, metadata={"help": "'latest' or a checkpoint-{step} folder."}
    )
    num_validation_images: int = 2
    run_test_evaluation: bool = dataclasses.field(
        default=True,
        metadata={"help": "Evaluate the best model on the test split and put the numbers in the model card."},
    )


@dataclasses.dataclass
class HubArguments:
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False


ARGUMENT_GROUPS = (
    ModelArguments,
    DataArguments,
    LossArguments,
    OptimizationArguments,
    StageArguments,
    LoggingArguments,
    HubArguments,
)


@dataclasses.dataclass
class FinetuneConfig:
    """All argument groups of one run."""

    model: ModelArguments
    data: DataArguments
    loss: LossArguments
    optim: OptimizationArguments
    stages: StageArguments
    logging: LoggingArguments
    hub: HubArguments

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{key: value}`` as in the YAML (saved next to the model, shown in the model card)."""
        flat: dict[str, Any] = {}
        for group in dataclasses.fields(self):
            flat.update(dataclasses.asdict(getattr(self, group.name)))
        return flat

    def validate(self) -> None:
        """Checks that depend on several keys; raises :class:`ConfigError` naming the key."""
        if self.data.dataset_name_or_path is None:
            raise ConfigError("dataset_name_or_path is required (a converted folder or a Hub dataset id)")
        if self.data.image_size % 14 or self.data.image_size <= 0:
            raise ConfigError(f"image_size must be a positive multiple of 14, got {self.data.image_size}")
        if self.optim.lr_scheduler_type not in ("poly", "cosine", "linear"):
            raise ConfigError(
                f"lr_scheduler_type must be poly, cosine or linear, got {self.optim.lr_scheduler_type!r}"
            )
        if self.model.model_config not in (None, "tiny"):
            raise ConfigError(f"model_config must be 'tiny' or unset, got {self.model.model_config!r}")
        if self.hub.push_to_hub and not self.hub.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id")
        steps = self.logging.checkpointing_steps
        if steps not in (None, "epoch") and not (steps.isdigit() and int(steps) > 0):
            raise ConfigError(
                f"checkpointing_steps must be a positive integer, 'epoch' or None, got {steps!r}"
            )
        for key in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        ):
            if getattr(self.optim, key) < 1:
                raise ConfigError(f"{key} must be >= 1")


def _field_names() -> dict[str, type]:
    return {field.name: group for group in ARGUMENT_GROUPS for field in dataclasses.fields(group)}


def _yaml_to_flags(values: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in values.items():
        if value is None:
            continue  # keep the dataclass default None; HfArgumentParser cannot parse a literal None
        flags.append(f"--{key}={str(value).lower() if isinstance(value, bool) else value}")
    return flags


def _is_optional(group: type, name: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(group)[name])


def _flag_pairs(args: list[str]) -> list[tuple[str, str | None]]:
    """``--key=value``, ``--key value`` and bare ``--flag`` -> ``[(key, value or None)]``."""
    pairs: list[tuple[str, str | None]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: use --key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif index + 1 < len(args) and not args[index + 1].startswith("--"):
            key, value = arg[2:], args[index + 1]
            index += 1
        else:
            key, value = arg[2:], None
        pairs.append((key, value))
        index += 1
    return pairs


def load_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a recipe YAML and rejects unknown keys, naming the key and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(values).__name__}")
    known = _field_names()
    unknown = sorted(key for key in values if key not in known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return values


def parse_config(argv: list[str] | None = None) -> FinetuneConfig:
    """``[--config FILE] [--key=value ...]`` -> :class:`FinetuneConfig` (YAML defaults, CLI overrides)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    yaml_values: dict[str, Any] = {}
    config_path = None
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            config_path = argv[index + 1]
            del argv[index : index + 2]
            break
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
            del argv[index]
            break
    if config_path is not None:
        yaml_values = load_recipe_yaml(config_path)

    known = _field_names()
    # Later values win (CLI over YAML); a null value ("None", "none", "null") unsets an optional key.
    values: dict[str, str | None] = {}
    for key, value in _flag_pairs(_yaml_to_flags(yaml_values) + argv):
        if key not in known:
            raise ConfigError(f"unknown flag --{key}")
        values[key] = value
    nulls = [key for key, value in values.items() if value in NULL_STRINGS and _is_optional(known[key], key)]
    flags = [
        f"--{key}" if value is None else f"--{key}={value}"
        for key, value in values.items()
        if key not in nulls
    ]
    parser = HfArgumentParser(ARGUMENT_GROUPS)
    try:
        groups = parser.parse_args_into_dataclasses(args=flags)
    except SystemExit as error:  # argparse has already printed the key and the reason
        raise ConfigError(
            f"invalid value in {config_path or 'command line'} (see the message above)"
        ) from error
    for group in groups:
        for field in dataclasses.fields(group):
            if field.name in nulls:
                setattr(group, field.name, None)
    config = FinetuneConfig(*groups)
    config.validate()
    return config
