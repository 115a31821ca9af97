"""Model card (README.md) of a fine-tuned model: metadata, model-index from real metrics, body.

Every number in the card comes from the ``test_metrics`` passed in; with ``test_metrics=None`` the
card says that no evaluation was run. The training config is passed through :func:`scrub_secrets`
and the finished card is checked for Hugging Face tokens before it is returned.

Licence (:func:`license_for_base_model`): a fine-tune carries its base's licence: Depth Anything V2
Small is ``apache-2.0``, Base and Large are ``cc-by-nc-4.0``. A base whose backbone size matches no
released DAV2 model (the project's tiny test configs) cannot hold DAV2 weights, so it gets the
project's own licence, ``apache-2.0``. A base that cannot be identified (a hub id of another
model, a local folder without ``config.json``) raises: the caller passes ``license=`` explicitly.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from n5k_hf.hub.dataset_card import NUTRITION5K_BIBTEX
from n5k_hf.metrics.depth import flatten_metrics

DEPTH_ANYTHING_V2_BIBTEX = """\
@article{depth_anything_v2,
  title={Depth Anything V2},
  author={Yang, Lihe and Kang, Bingyi and Huang, Zilong and Zhao, Zhen and Xu, Xiaogang and Feng, Jiashi and Zhao, Hengshuang},
  journal={arXiv:2406.09414},
  year={2024}
}"""

PROJECT_LICENSE = "apache-2.0"
LICENSE_BY_DAV2_SIZE = {"small": "apache-2.0", "base": "cc-by-nc-4.0", "large": "cc-by-nc-4.0"}
# DINOv2 hidden size of each released Depth Anything V2 backbone.
DAV2_SIZE_BY_HIDDEN_SIZE = {384: "small", 768: "base", 1024: "large"}
_DAV2_HUB_NAME = re.compile(
    r"depth-anything-v2-(?:metric-(?:indoor|outdoor|hypersim|vkitti)-)?(small|base|large)", re.I
)

SCATTER_PLOT_FILENAME = "volume_scatter.png"

# Hugging Face user access tokens: "hf_" followed by a long alphanumeric string.
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
_SECRET_KEY_PARTS = ("token", "api_key", "apikey", "secret", "password")
REDACTED = "<redacted>"

# metric key -> (EvalResult metric_type, display name). Keys are those of
# n5k_hf.metrics.volume_metrics and of the flattened depth metrics ("food/abs_rel", ...).
_KNOWN_METRICS = {
    "volume_mae_ml": ("mae", "Volume MAE (mL)"),
    "volume_mean_error_ml": ("mean_error", "Volume mean error, predicted - reference (mL)"),
    "volume_mape": ("mape", "Volume MAPE (%)"),
    "volume_median_ape": ("median_ape", "Volume median APE (%)"),
    "within_10pct": ("within_10pct", "Dishes with volume APE <= 10 % (%)"),
    "within_20pct": ("within_20pct", "Dishes with volume APE <= 20 % (%)"),
}
_DEPTH_DISPLAY = {
    "abs_rel": "AbsRel",
    "sq_rel": "SqRel",
    "rmse": "RMSE (m)",
    "rmse_log": "RMSE log",
    "log10": "log10",
    "silog": "SiLog",
    "d1": "δ1",
    "d2": "δ2",
    "d3": "δ3",
    "mae_mm": "MAE (mm)",
    "rmse_mm": "RMSE (mm)",
}
# Counts ("count", "num_*") are shown in the card's table but are not metrics of the model-index.
_COUNT_NAMES = {
    "count": "Dishes in the volume metrics",
    "num_dishes": "Dishes in the split",
    "num_evaluated": "Dishes with a measurable reference volume",
    "num_skipped": "Dishes skipped (no measurable reference volume)",
}
# What each n5k_hf.geometry.volume.integrate_volume_ml method does (measured on ray-cast scenes).
_INTEGRATOR_NOTES = {
    "heightmap": (
        ": each masked pixel's footprint on the table plane (half-way to its neighbours; visible side "
        "walls own none) is rasterised onto 1 mm cells by exact overlap, each cell takes the "
        "overlap-weighted mean height, and V = sum of cell area x height. It is the accurate method (within 2 % on ray-cast caps, "
        "boxes and cylinders)."
    ),
    "column": (
        ": V = sum over the mask of height x Z²/(fx·fy), the pixel footprint at the surface. It is "
        "biased: mounds come out too small, off-centre boxes too large (their side walls count)."
    ),
    "frustum": (
        ": V = sum over the mask of (Z_table³ - Z³)/(3·fx·fy), each pixel's viewing frustum between the "
        "surface and the table. Exact for mounds, too large where a side wall hides table (boxes)."
    ),
}


class ModelCardError(ValueError):
    """A model card cannot be built from the given inputs."""


def scrub_secrets(config: Any) -> Any:
    """A copy of ``config`` without secrets, recursively through dicts, lists and tuples.

    Keys whose name contains ``token``, ``api_key``, ``secret`` or ``password`` (any case) are
    dropped; string values that start with ``hf_`` or contain a Hugging Face token become
    ``"<redacted>"``.
    """
    if isinstance(config, Mapping):
        return {
            key: scrub_secrets(value)
            for key, value in config.items()
            if not any(part in str(key).lower() for part in _SECRET_KEY_PARTS)
        }
    if isinstance(config, list | tuple):
        return [scrub_secrets(value) for value in config]
    if isinstance(config, str) and (config.startswith("hf_") or _TOKEN_PATTERN.search(config)):
        return REDACTED
    return config


def _config_dict_from(base_model_id_or_config: Any) -> dict | None:
    """The config dict of a transformers config, a dict, or a local model folder; else None."""
    if isinstance(base_model_id_or_config, Mapping):
        return dict(base_model_id_or_config)
    if hasattr(base_model_id_or_config, "to_dict"):
        return base_model_id_or_config.to_dict()
    config_path = Path(str(base_model_id_or_config)) / "config.json"
    if config_path.is_file():
        try:
            return json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ModelCardError(f"{config_path}: not valid JSON ({error})") from error
    return None


def license_for_base_model(base_model_id_or_config: Any) -> str:
    """Licence id of a fine-tune of ``base_model_id_or_config`` (see the module docstring).

    Args:
        base_model_id_or_config: a Hub id (``depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf``),
            a local model folder holding ``config.json``, a config dict or a transformers config.
    """
    if isinstance(base_model_id_or_config, str | Path):
        match = _DAV2_HUB_NAME.search(Path(str(base_model_id_or_config)).name) or _DAV2_HUB_NAME.search(
            str(base_model_id_or_config)
        )
        if match and not Path(str(base_model_id_or_config)).is_dir():
            return LICENSE_BY_DAV2_SIZE[match.group(1).lower()]
    config = _config_dict_from(base_model_id_or_config)
    if config is None:
        raise ModelCardError(
            f"cannot tell the licence of base model {base_model_id_or_config!r}: it is neither a Depth "
            "Anything V2 hub id nor a folder with config.json; pass license= explicitly"
        )
    backbone = config.get("backbone_config")
    if not isinstance(backbone, Mapping) or "hidden_size" not in backbone:
        raise ModelCardError(
            f"cannot tell the licence of base model {base_model_id_or_config!r}: its config has no "
            "backbone_config.hidden_size; pass license= explicitly"
        )
    size = DAV2_SIZE_BY_HIDDEN_SIZE.get(int(backbone["hidden_size"]))
    return PROJECT_LICENSE if size is None else LICENSE_BY_DAV2_SIZE[size]


def _numeric_metrics(test_metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flattened finite numeric metrics (``depth/food/abs_rel`` style keys), in input order."""
    numeric: dict[str, float] = {}
    for key, value in flatten_metrics(test_metrics).items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            continue
        if math.isfinite(float(value)):
            numeric[key] = float(value)
    return numeric


def _metric_type_and_name(key: str) -> tuple[str, str]:
    """EvalResult metric_type and display name of a flattened metric key."""
    leaf = key.rsplit("/", 1)[-1]
    if leaf in _KNOWN_METRICS:
        return _KNOWN_METRICS[leaf]
    regions = [part for part in key.split("/")[:-1] if part != "depth"]
    region = regions[-1] if regions else None
    if leaf in _DEPTH_DISPLAY:
        region = region or "image"
        return f"{leaf}_{region}", f"Depth {_DEPTH_DISPLAY[leaf]} ({region})"
    if region is None and leaf in _COUNT_NAMES:
        return leaf, _COUNT_NAMES[leaf]
    if leaf == "num_images" and region is not None:
        return f"num_images_{region}", f"Images in the depth metrics ({region})"
    if leaf == "num_skipped" and region is not None:
        return f"num_skipped_{region}", f"Images skipped for depth, no valid pixel ({region})"
    return key.replace("/", "_"), key


def _is_count(key: str) -> bool:
    leaf = key.rsplit("/", 1)[-1]
    return leaf == "count" or leaf.startswith("num_")


def _eval_results(
    metrics: dict[str, float], *, dataset_type: str, dataset_name: str, dataset_split: str
) -> list[EvalResult]:
    results = []
    for key, value in metrics.items():
        if _is_count(key):
            continue
        metric_type, metric_name = _metric_type_and_name(key)
        results.append(
            EvalResult(
                task_type="depth-estimation",
                task_name="Depth estimation and food volume",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=dataset_split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=value,
            )
        )
    return results


def _is_hub_id(name: str) -> bool:
    """A string that looks like ``owner/name`` and is not an existing local path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not Path(name).exists()


def _yaml_safe(value: Any) -> Any:
    """Plain YAML types: Paths and other objects become strings, tuples and arrays lists."""
    if isinstance(value, Mapping):
        return {str(key): _yaml_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_yaml_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return _yaml_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _format_value(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"


def _metrics_section(metrics: dict[str, float] | None, *, synthetic_data: bool, dataset_split: str) -> str:
    if metrics is None:
        return (
            "## Evaluation\n\n"
            "No evaluation was run for this model: this card reports no metric. Evaluate it with "
            "`n5k_hf.evaluation.evaluate_model` on the converted dataset's test split.\n"
        )
    if not metrics:
        return "## Evaluation\n\nThe evaluation produced no finite metric: this card reports none.\n"
    ordered_keys = [key for key in metrics if not _is_count(key)] + [key for key in metrics if _is_count(key)]
    rows = [f"| {_metric_type_and_name(key)[1]} | {_format_value(metrics[key])} |" for key in ordered_keys]
    warning = (
        "\n> **These numbers come from synthetic ray-cast dishes, not from Nutrition5k photographs.** "
        "They check the pipeline; they say nothing about accuracy on real food.\n"
        if synthetic_data
        else ""
    )
    return (
        "## Evaluation\n"
        f"{warning}\n"
        f"Split: `{dataset_split}`. Depth metrics follow the official Depth Anything V2 definitions "
        '(per image, then averaged; δ1 = share of pixels with max(p/t, t/p) < 1.25). "food" = food '
        'mask and valid sensor depth, "image" = every valid pixel. Volume APE = 100 · |predicted − '
        "reference| / reference.\n\n"
        "| metric | value |\n| --- | --- |\n" + "\n".join(rows) + "\n"
    )


def _volume_section(volume_method: Mapping[str, Any]) -> str:
    missing = [key for key in ("K", "plane", "integrator") if key not in volume_method]
    if missing:
        raise ModelCardError(f"volume_method lacks the keys {missing} (needs K, plane, integrator)")
    intrinsics = np.asarray(volume_method["K"], dtype=np.float64)
    if intrinsics.shape != (3, 3):
        raise ModelCardError(f"volume_method['K'] must be a 3x3 matrix, got shape {intrinsics.shape}")
    k_rows = "\n".join("[" + ", ".join(f"{value:.2f}" for value in row) + "]" for row in intrinsics)
    integrator_note = _INTEGRATOR_NOTES.get(str(volume_method["integrator"]), ".")
    extra = {key: value for key, value in volume_method.items() if key not in ("K", "plane", "integrator")}
    extra_block = ""
    if extra:
        extra_block = (
            "\nOther settings:\n\n```yaml\n" + yaml.safe_dump(_yaml_safe(extra), sort_keys=False) + "```\n"
        )
    return (
        "## How the volume is computed\n\n"
        "1. The model predicts metric depth (metres) for every pixel.\n"
        "2. Pixels are back-projected with the camera matrix K (pixels):\n\n"
        f"```\n{k_rows}\n```\n\n"
        "   Nutrition5k released no intrinsics. For its 640x480 images this project derives f = 0.359 / "
        "sqrt(5.957e-7) ≈ 465 px from the paper's camera-to-table distance (35.9 cm) and per-pixel table "
        "area (5.957e-3 cm²). Rescale K when the image is resized "
        "(`n5k_hf.geometry.intrinsics.resize_intrinsics`).\n"
        f"3. Table plane: {volume_method['plane']}\n"
        f"4. Integrator: `{volume_method['integrator']}`. The height above the plane (clipped at 0) is "
        f"integrated over the food mask{integrator_note}\n" + extra_block
    )


def _usage_section(model_ref: str) -> str:
    return f"""## How to use

```python
import numpy as np
from PIL import Image
from transformers import pipeline

from n5k_hf.geometry.intrinsics import nutrition5k_intrinsics
from n5k_hf.geometry.volume import integrate_volume_ml

depth_estimator = pipeline("depth-estimation", model="{model_ref}")
image = Image.open("rgb.png")  # overhead photo, 640x480 as in Nutrition5k
depth_m = depth_estimator(image)["predicted_depth"].squeeze().numpy()  # metres, (H, W)
food_mask = np.array(Image.open("food_mask.png")) > 0  # (H, W) bool, your food segmentation
K = nutrition5k_intrinsics(width=image.width, height=image.height)
volume_ml = integrate_volume_ml(depth_m, food_mask, K, method="heightmap")
print(f"{{volume_ml:.0f}} mL")
```

`predicted_depth` is metric depth in metres; the pipeline's `depth` image is min-max normalised for
display and is not metric. `n5k_hf` is this model's companion package (geometry, training, evaluation).
"""


def build_model_card(
    *,
    base_model: str,
    datasets: list[str] | str | None,
    test_metrics: Mapping[str, Any] | None,
    training_config: Mapping[str, Any],
    volume_method: Mapping[str, Any],
    hub_model_id: str | None = None,
    scatter_plot_path: str | Path | None = None,
    license: str | None = None,
    synthetic_data: bool = False,
    dataset_split: str = "test",
) -> ModelCard:
    """The model card of a fine-tuned model.

    Args:
        base_model: the Hub id (or local folder) of the model that was fine-tuned.
        datasets: Hub ids of the training datasets (local paths are named in the body only).
        test_metrics: the evaluation's metrics (volume keys of ``n5k_hf.metrics.volume_metrics``,
            depth metrics nested ``{"depth": {"food": {...}, "image": {...}}}`` or flattened
            ``"depth/food/abs_rel"``), or None when no evaluation was run.
        training_config: the training configuration (secrets are scrubbed).
        volume_method: ``K`` (3, 3) in pixels, ``plane`` (how the table plane is found), ``integrator``
            (the ``integrate_volume_ml`` method), and optional further settings.
        hub_model_id: the repo the card is for (used in the usage snippet).
        scatter_plot_path: a predicted-against-reference volume plot, linked as ``volume_scatter.png``
            (:func:`write_model_card` copies it next to README.md).
        license: the licence id; by default :func:`license_for_base_model` of ``base_model``.
        synthetic_data: True when the data were synthetic dishes (the card then says so).
        dataset_split: the split ``test_metrics`` were measured on.
    """
    license_id = license if license is not None else license_for_base_model(base_model)
    dataset_list = [datasets] if isinstance(datasets, str) else list(datasets or [])
    hub_datasets = [name for name in dataset_list if _is_hub_id(name)]
    metrics = None if test_metrics is None else _numeric_metrics(test_metrics)
    dataset_name = "Nutrition5k (synthetic dishes)" if synthetic_data else "Nutrition5k"
    eval_results = None
    if metrics:
        eval_results = _eval_results(
            metrics,
            dataset_type=hub_datasets[0] if hub_datasets else "nutrition5k",
            dataset_name=dataset_name,
            dataset_split=dataset_split,
        )
    model_name = hub_model_id.split("/")[-1] if hub_model_id else "n5k-hf-depth-volume"
    card_data = ModelCardData(
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=hub_datasets or None,
        library_name="transformers",
        pipeline_tag="depth-estimation",
        license=license_id,
        tags=["depth-estimation", "depth-anything-v2", "food", "volume-estimation", "nutrition5k"],
        model_name=model_name,
        eval_results=eval_results or None,
    )
    base_reference = (
        f"[{base_model}](https://huggingface.co/{base_model})"
        if _is_hub_id(base_model)
        else f"`{base_model}`"
    )
    config_yaml = yaml.safe_dump(_yaml_safe(scrub_secrets(training_config)), sort_keys=False)
    scatter_section = ""
    if scatter_plot_path is not None:
        scatter_section = f"\n![Predicted against reference volume]({SCATTER_PLOT_FILENAME})\n"
    synthetic_note = (
        "- **This model was trained and evaluated on synthetic ray-cast dishes**, not on Nutrition5k "
        "photographs: its numbers validate the pipeline only.\n"
        if synthetic_data
        else ""
    )
    body = f"""
# {model_name}

A fine-tune of {base_reference} (Depth Anything V2, metric depth head) on overhead RGB-D photographs of plated food from Nutrition5k,
to measure food volume in millilitres. It predicts metric depth (metres) from one RGB image; the volume
of a food mask is integrated from that depth above a fitted table plane.

Training data: {", ".join(dataset_list) if dataset_list else "not recorded"}. Licence: `{license_id}`
(a fine-tune carries its base model's licence: Depth Anything V2 Small is Apache-2.0, Base and Large
are CC-BY-NC-4.0).

{_usage_section(hub_model_id or "path/to/this/model")}
{_metrics_section(metrics, synthetic_data=synthetic_data, dataset_split=dataset_split)}{scatter_section}
{_volume_section(volume_method)}
## Training configuration

```yaml
{config_yaml}```

## Limitations

{synthetic_note}- Nutrition5k has no ground-truth volume. The reference volume is integrated from the RealSense
  sensor depth and a food mask with the same geometry; the weighed mass (`total_mass`, g) is the only
  physical ground truth. Volume errors here are errors against that reference, not against water
  displacement.
- The camera intrinsics are derived from the paper (f ≈ 465 px), not released; a wrong K scales every
  volume (the D435 factory value f ≈ 616 px would change pixel areas by 1.75x).
- Trained on one overhead setup (camera about 36 cm above a cafeteria table); other heights, angles,
  plates or lighting are out of distribution. Sensor depth holes and reflective or transparent food
  limit both the reference and the prediction.
- The food mask is an input: volume quality depends on the segmentation you supply.

## Citation

```bibtex
{NUTRITION5K_BIBTEX}

{DEPTH_ANYTHING_V2_BIBTEX}
```
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    token_match = _TOKEN_PATTERN.search(str(card))
    if token_match:
        raise ModelCardError(
            "the model card contains something that looks like a Hugging Face token; refusing it"
        )
    return card


def write_model_card(output_dir: str | Path, **kwargs: Any) -> Path:
    """Build the card with :func:`build_model_card` and write ``output_dir/README.md``.

    A ``scatter_plot_path`` is copied next to README.md as ``volume_scatter.png``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scatter_plot_path = kwargs.get("scatter_plot_path")
    if scatter_plot_path is not None:
        source = Path(scatter_plot_path)
        if not source.is_file():
            raise ModelCardError(f"scatter_plot_path {source} does not exist")
        destination = output_dir / SCATTER_PLOT_FILENAME
        if source.resolve() != destination.resolve():
            shutil.copyfile(source, destination)
    card = build_model_card(**kwargs)
    readme_path = output_dir / "README.md"
    card.save(readme_path)
    return readme_path
