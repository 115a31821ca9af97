"""Evaluation of a depth model on a converted split: volumes per dish and DAV2 depth metrics.

Shared by the training loop's validation and ``scripts/evaluate.py``. Each process measures its
own samples (prediction upsampled bilinearly to the stored label size, as in the official DAV2
evaluation; volume from the predicted depth with the table plane fitted on a ring around the food
mask, by the same integrator as the reference), the per-sample numbers are gathered, de-duplicated by
dataset index (the padding of uneven batches) and reduced in dataset order, so 1 and 2 processes
give identical results.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from n5k_hf.data.transforms import EvalTransform, TransformedDataset, collate_samples
from n5k_hf.geometry.volume import integrate_volume_ml
from n5k_hf.metrics.depth import DEPTH_METRIC_NAMES, DEPTH_REGIONS, depth_metrics
from n5k_hf.metrics.volume import PER_DISH_COLUMNS, per_dish_rows, volume_metrics

# Layout of one gathered row: index, predicted and reference volume, then depth metrics per region.
DEPTH_COLUMNS = tuple(f"{region}/{name}" for region in DEPTH_REGIONS for name in DEPTH_METRIC_NAMES)
SAMPLE_COLUMNS = ("index", "predicted_volume_ml", "reference_volume_ml", *DEPTH_COLUMNS)


@dataclasses.dataclass
class EvaluationResult:
    """Split-level metrics and per-dish rows (in dataset order)."""

    metrics: dict[str, Any]
    per_dish: list[dict[str, Any]]
    samples: np.ndarray  # (N, len(SAMPLE_COLUMNS)) float64, sorted by index

    def column(self, name: str) -> np.ndarray:
        return self.samples[:, SAMPLE_COLUMNS.index(name)]


def eval_dataloader(
    split, image_processor, *, batch_size: int, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    """Unprepared DataLoader of :class:`EvalTransform` samples of a ``datasets.Dataset`` split, in order."""
    return torch.utils.data.DataLoader(
        TransformedDataset(split, EvalTransform(image_processor)),
        batch_size=batch_size,
        collate_fn=collate_samples,
        num_workers=num_workers,
    )


def predict_depth_m(
    model: torch.nn.Module, pixel_values: torch.Tensor, label_hw: tuple[int, int]
) -> torch.Tensor:
    """(B, 3, h, w) normalised images -> (B, H, W) metric depth at the label size (bilinear upsampling)."""
    predicted = model(pixel_values=pixel_values).predicted_depth
    if tuple(predicted.shape[-2:]) != tuple(label_hw):
        predicted = F.interpolate(predicted[:, None], size=label_hw, mode="bilinear", align_corners=False)[
            :, 0
        ]
    return predicted


def measure_sample(
    pred_depth_m: np.ndarray,
    target_depth_m: np.ndarray,
    valid: np.ndarray,
    food: np.ndarray,
    K: np.ndarray,
    reference_volume_ml: float,
    *,
    integrator: str,
) -> np.ndarray:
    """Numbers of one dish, all float64: ``SAMPLE_COLUMNS`` without ``index``.

    Args:
        pred_depth_m, target_depth_m: (H, W) metres (target NaN where invalid).
        valid, food: (H, W) bool.
        K: (3, 3) intrinsics of the (H, W) grid.

    A volume that cannot be measured (no food pixel, no table ring to fit a plane on) is NaN and
    the dish is counted as skipped by :func:`summarise_samples`.
    """
    try:
        predicted_volume = (
            integrate_volume_ml(pred_depth_m, food, K, method=integrator) if food.any() else math.nan
        )
    except ValueError:
        predicted_volume = math.nan
    row = [predicted_volume, float(reference_volume_ml)]
    regions = {"food": food & valid, "image": valid}
    for region in DEPTH_REGIONS:
        if regions[region].any():
            metrics = depth_metrics(np.maximum(pred_depth_m, 1e-6), target_depth_m, regions[region])
            row.extend(metrics[name] for name in DEPTH_METRIC_NAMES)
        else:
            row.extend([math.nan] * len(DEPTH_METRIC_NAMES))
    return np.asarray(row, dtype=np.float64)


def summarise_samples(samples: np.ndarray) -> dict[str, Any]:
    """(N, len(SAMPLE_COLUMNS)) gathered rows -> split metrics (volume, then depth per region)."""
    samples = samples[np.argsort(samples[:, 0], kind="stable")]
    predicted = samples[:, 1]
    reference = samples[:, 2]
    measurable = np.isfinite(predicted) & np.isfinite(reference) & (reference > 0)
    metrics: dict[str, Any] = {"num_dishes": len(samples), "num_evaluated": int(measurable.sum())}
    metrics["num_skipped"] = metrics["num_dishes"] - metrics["num_evaluated"]
    if measurable.any():
        metrics.update(volume_metrics(np.maximum(predicted[measurable], 0.0), reference[measurable]))
    metrics["depth"] = {}
    for region in DEPTH_REGIONS:
        columns = [SAMPLE_COLUMNS.index(f"{region}/{name}") for name in DEPTH_METRIC_NAMES]
        values = samples[:, columns]
        evaluated = np.isfinite(values).all(axis=1)
        region_metrics: dict[str, Any] = {
            name: float(values[evaluated, i].mean()) if evaluated.any() else math.nan
            for i, name in enumerate(DEPTH_METRIC_NAMES)
        }
        region_metrics["num_images"] = int(evaluated.sum())
        metrics["depth"][region] = region_metrics
    return metrics


@torch.no_grad()
def evaluate_dataloader(
    model: torch.nn.Module,
    dataloader,
    accelerator,
    *,
    integrator: str = "heightmap",
    dish_ids: list[str] | None = None,
    total_mass: list[float | None] | None = None,
    description: str = "evaluation",
    keep_predictions: int = 0,
) -> tuple[EvaluationResult, list[dict[str, np.ndarray]]]:
    """Runs ``model`` over a prepared dataloader of :class:`~n5k_hf.data.transforms.EvalTransform` samples.

    Returns the result (identical on every process) and, on each process, up to ``keep_predictions``
    of its first samples as numpy arrays (for validation images and plots).
    """
    model.eval()
    gathered: list[torch.Tensor] = []
    kept: list[dict[str, np.ndarray]] = []
    progress = tqdm(dataloader, desc=description, disable=not accelerator.is_local_main_process, leave=False)

    def measure_batch(pred_np: np.ndarray, batch: dict[str, Any]) -> np.ndarray:
        depth_np = batch["depth_m"].numpy()
        valid_np = batch["valid_mask"].numpy()
        food_np = batch["food_mask"].numpy()
        K_np = batch["K"].numpy().astype(np.float64)
        rows = [
            np.concatenate(
                [
                    [float(batch["index"][i])],
                    measure_sample(
                        pred_np[i],
                        depth_np[i],
                        valid_np[i],
                        food_np[i],
                        K_np[i],
                        float(batch["volume_ml"][i]),
                        integrator=integrator,
                    ),
                ]
            )
            for i in range(pred_np.shape[0])
        ]
        return np.stack(rows)

    def gather(pending: Future) -> None:
        local = torch.as_tensor(pending.result(), dtype=torch.float64, device=accelerator.device)
        gathered.append(accelerator.gather(local).cpu())

    # Measuring (plane fit, volume, depth metrics: numpy/OpenCV) runs on a worker thread while the
    # model predicts the next batch. Gathers stay in batch order on every process, one batch behind
    # the dataloader, so gather_for_metrics (which trims padding by the loader's *current* position)
    # would trim the wrong batch: the padded duplicates of the last batch are dropped by their
    # dataset index below instead.
    pending: Future | None = None
    with ThreadPoolExecutor(max_workers=1) as executor:
        for batch in progress:
            pred_np = (
                predict_depth_m(model, batch["pixel_values"], tuple(batch["depth_m"].shape[-2:]))
                .float()
                .cpu()
                .numpy()
            )
            cpu_batch = {
                key: value.cpu() if torch.is_tensor(value) else value for key, value in batch.items()
            }
            for i in range(pred_np.shape[0]):
                if len(kept) < keep_predictions:
                    kept.append(
                        {
                            "index": int(cpu_batch["index"][i]),
                            "pred_depth_m": pred_np[i],
                            "depth_m": cpu_batch["depth_m"][i].numpy(),
                        }
                    )
            if pending is not None:
                gather(pending)
            pending = executor.submit(measure_batch, pred_np, cpu_batch)
        if pending is not None:
            gather(pending)
    samples = torch.cat(gathered).numpy() if gathered else np.zeros((0, len(SAMPLE_COLUMNS)))
    _, first_of_each_index = np.unique(samples[:, 0], return_index=True)
    samples = samples[first_of_each_index]  # sorted by dataset index, padding duplicates dropped
    metrics = summarise_samples(samples)
    per_dish = []
    if dish_ids is not None and len(samples):
        order = samples[:, 0].astype(int)
        predicted = samples[:, 1]
        reference = samples[:, 2]
        ok = np.isfinite(predicted) & np.isfinite(reference) & (reference > 0)
        masses = total_mass if total_mass is not None else [None] * len(dish_ids)
        per_dish = per_dish_rows(
            [dish_ids[i] for i in order[ok]],
            reference[ok],
            np.maximum(predicted[ok], 0.0),
            samples[ok, SAMPLE_COLUMNS.index("food/mae_mm")],
            [masses[i] for i in order[ok]],
        )
    return EvaluationResult(metrics=metrics, per_dish=per_dish, samples=samples), kept


def write_evaluation_report(
    result: EvaluationResult,
    output_dir: str | Path,
    *,
    dataset=None,
    panels: list[dict[str, np.ndarray]] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Writes ``metrics.json``, ``per_dish.csv`` and ``plots/`` (volume scatter, APE histogram, panels).

    ``dataset`` (the evaluated ``datasets.Dataset``) supplies the RGB of the depth panels, looked up
    by the ``index`` of each entry of ``panels`` (as kept by :func:`evaluate_dataloader`).
    """
    from n5k_hf.plots import plot_ape_histogram, plot_depth_panel, plot_volume_scatter

    output_dir = Path(output_dir)
    plots_dir = output_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": output_dir / "metrics.json", "per_dish": output_dir / "per_dish.csv"}
    paths["metrics"].write_text(
        json.dumps({**result.metrics, **(extra or {})}, indent=2, allow_nan=True) + "\n"
    )
    with paths["per_dish"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(PER_DISH_COLUMNS))
        writer.writeheader()
        writer.writerows(result.per_dish)
    if result.per_dish:
        predicted = np.array([row["predicted_volume_ml"] for row in result.per_dish])
        reference = np.array([row["reference_volume_ml"] for row in result.per_dish])
        paths["volume_scatter"] = plot_volume_scatter(predicted, reference, plots_dir / "volume_scatter.png")
        paths["ape_histogram"] = plot_ape_histogram(
            np.array([row["ape_pct"] for row in result.per_dish]), plots_dir / "ape_histogram.png"
        )
    if dataset is not None:
        for item in panels:
            row = dataset[int(item["index"])]
            rgb = np.asarray(row["image"].convert("RGB"))
            path = plots_dir / f"depth_{row['dish_id']}.png"
            paths[f"panel_{row['dish_id']}"] = plot_depth_panel(
                rgb, item["depth_m"], item["pred_depth_m"], path, title=row["dish_id"]
            )
    return paths


def check_local_or_hub_reference(name_or_path: str, what: str) -> None:
    """Raise FileNotFoundError when ``name_or_path`` is neither an existing path nor a valid Hub id.

    A missing folder such as ``/runs/model`` is reported as such instead of being sent to the Hub.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(name_or_path).exists():
        return
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise FileNotFoundError(f"{what} {name_or_path}: no such folder (and not a Hub id)") from None


def load_model_and_processor(model_name_or_path: str, *, revision: str | None = None):
    """(DAV2-metric model in eval mode, its image processor) from a saved folder or a Hub id.

    Works alike for the base Hub models (zero-shot) and the recipe's output folders. Raises
    ``ModelLoadError`` (a ValueError) naming the model when its config is not a metric DAV2 one or
    it has no image processor, FileNotFoundError for a missing folder.
    """
    from transformers import AutoImageProcessor

    from n5k_hf.modeling import ModelLoadError, load_depth_model

    check_local_or_hub_reference(model_name_or_path, "model")
    model = load_depth_model(model_name_or_path, revision=revision)
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, revision=revision)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"{model_name_or_path}: cannot load the image processor (preprocessor_config.json): {error}"
        ) from error
    return model.eval(), processor


def update_model_card_metrics(
    model_dir: str | Path,
    metrics: dict[str, Any],
    *,
    dataset_name_or_path: str,
    split: str,
    K: np.ndarray,
    integrator: str,
    scatter_plot_path: str | Path | None,
) -> Path:
    """Rewrites ``model_dir/README.md`` with these test metrics.

    The training config comes from ``model_dir/finetune_config.yaml`` when present (base model,
    training dataset, hub id and the config shown in the card); without it the model folder itself
    is named as the base and the evaluated dataset as the data. Returns the README path.
    """
    import yaml

    from n5k_hf.hub.model_card import write_model_card
    from n5k_hf.training.release import _is_synthetic, volume_method_description

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise NotADirectoryError(f"--update-card needs a local model folder; {model_dir} is not one")
    config_path = model_dir / "finetune_config.yaml"
    training_config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            training_config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{config_path}: not valid YAML ({error})") from error
        if not isinstance(training_config, dict):
            raise ValueError(
                f"{config_path}: expected a mapping of config keys, got {type(training_config).__name__}"
            )
    training_dataset = training_config.get("dataset_name_or_path") or dataset_name_or_path
    return write_model_card(
        model_dir,
        base_model=training_config.get("model_name_or_path") or str(model_dir),
        datasets=[training_dataset],
        test_metrics=metrics,
        training_config=training_config,
        volume_method=volume_method_description(K, integrator),
        hub_model_id=training_config.get("hub_model_id"),
        scatter_plot_path=scatter_plot_path,
        synthetic_data=_is_synthetic(training_dataset),
        license="apache-2.0" if training_config.get("model_config") == "tiny" else None,
        dataset_split=split,
    )


def run_evaluation(
    model_name_or_path: str,
    dataset_name_or_path: str,
    output_dir: str | Path,
    *,
    split: str = "test",
    batch_size: int = 4,
    integrator: str = "heightmap",
    max_samples: int | None = None,
    num_workers: int = 0,
    num_panels: int = 3,
    update_card: bool = False,
    model_revision: str | None = None,
    dataset_revision: str | None = None,
) -> dict[str, Any]:
    """Evaluates a model on one split of a converted dataset; what ``scripts/evaluate.py`` runs.

    Creates an ``Accelerator`` (``cpu=True`` without CUDA, so that ``torchrun --nproc_per_node N``
    runs DDP over gloo on CPU), evaluates on every process with :func:`evaluate_dataloader`, and on
    the main process writes :func:`write_evaluation_report` to ``output_dir`` (``metrics.json`` gets
    an ``evaluation`` section: model, dataset, split, integrator, batch size, ``num_processes``) and,
    with ``update_card``, the model folder's card (:func:`update_model_card_metrics`).

    Returns the metrics written to ``metrics.json`` (identical on every process).
    """
    from accelerate import Accelerator

    from n5k_hf.data.loading import get_split, load_n5k_dataset
    from n5k_hf.geometry.volume import VOLUME_METHODS

    if integrator not in VOLUME_METHODS:
        raise ValueError(f"unknown integrator {integrator!r}; valid: {', '.join(sorted(VOLUME_METHODS))}")
    if batch_size < 1 or num_workers < 0 or (max_samples is not None and max_samples < 1):
        raise ValueError(
            f"need batch_size >= 1, num_workers >= 0 and max_samples >= 1, got {batch_size}, {num_workers}, {max_samples}"
        )
    if update_card and not Path(model_name_or_path).is_dir():
        raise NotADirectoryError(f"--update-card needs a local model folder; {model_name_or_path} is not one")
    check_local_or_hub_reference(dataset_name_or_path, "dataset")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    try:
        with accelerator.main_process_first():
            dataset = load_n5k_dataset(dataset_name_or_path, revision=dataset_revision)
        part = get_split(dataset, split, source=dataset_name_or_path, max_samples=max_samples)
        if len(part) == 0:
            raise ValueError(f"{dataset_name_or_path}: split '{split}' has no rows")
        model, processor = load_model_and_processor(model_name_or_path, revision=model_revision)
        loader = accelerator.prepare(
            eval_dataloader(part, processor, batch_size=batch_size, num_workers=num_workers)
        )
        model = accelerator.prepare_model(model, evaluation_mode=True)
        result, kept = evaluate_dataloader(
            model,
            loader,
            accelerator,
            integrator=integrator,
            dish_ids=list(part["dish_id"]),
            total_mass=list(part["total_mass"]) if "total_mass" in part.column_names else None,
            keep_predictions=num_panels,
        )
        run_info = {
            "model": str(model_name_or_path),
            "dataset": str(dataset_name_or_path),
            "split": split,
            "integrator": integrator,
            "batch_size": batch_size,
            "max_samples": max_samples,
            "num_processes": accelerator.num_processes,
        }
        if accelerator.is_main_process:
            paths = write_evaluation_report(
                result, output_dir, dataset=part, panels=kept, extra={"evaluation": run_info}
            )
            if update_card:
                update_model_card_metrics(
                    model_name_or_path,
                    result.metrics,
                    dataset_name_or_path=dataset_name_or_path,
                    split=split,
                    K=np.asarray(part[0]["K"]),
                    integrator=integrator,
                    scatter_plot_path=paths.get("volume_scatter"),
                )
        accelerator.wait_for_everyone()
    finally:
        accelerator.end_training()
    return {**result.metrics, "evaluation": run_info}
