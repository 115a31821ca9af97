"""End of a fine-tuning run: best weights -> output folder, test evaluation, model card, Hub push.

The output folder becomes a complete Hugging Face model (``save_pretrained`` safetensors, config
with ``depth_estimation_type: metric``, image processor) that ``pipeline("depth-estimation")``
loads. The model card is written before any upload, and the upload skips checkpoints and
optimiser states.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import DepthAnythingForDepthEstimation

from n5k_hf.evaluation import eval_dataloader, evaluate_dataloader, write_evaluation_report
from n5k_hf.modeling import save_model_for_pipeline

if TYPE_CHECKING:
    from n5k_hf.training.loop import Finetuner

logger = logging.getLogger(__name__)

TEST_REPORT_DIRNAME = "test_evaluation"
PLANE_DESCRIPTION = "RANSAC then least squares on a ring of table pixels 10-40 px around the food mask"


def load_best_weights(finetuner: Finetuner) -> bool:
    """Loads ``best_model/`` into the (unwrapped) model on every process; False when there is none."""
    from n5k_hf.training.loop import BEST_MODEL_DIRNAME

    best_dir = finetuner.output_dir / BEST_MODEL_DIRNAME
    finetuner.accelerator.wait_for_everyone()
    if not (best_dir / "config.json").is_file():
        return False
    # from_pretrained applies transformers' checkpoint key conversions; a raw load_state_dict would not.
    best = DepthAnythingForDepthEstimation.from_pretrained(best_dir)
    finetuner.accelerator.unwrap_model(finetuner.model).load_state_dict(best.state_dict())
    return True


def volume_method_description(K: Any, integrator: str = "heightmap") -> dict[str, Any]:
    return {
        "K": np.asarray(K, dtype=float).round(3).tolist(),
        "plane": PLANE_DESCRIPTION,
        "integrator": integrator,
    }


def evaluate_test_split(finetuner: Finetuner) -> dict[str, Any] | None:
    """Evaluates the current model on the test split (all processes) and writes the report (main)."""
    config, accelerator = finetuner.config, finetuner.accelerator
    if (
        not config.logging.run_test_evaluation
        or finetuner.test_split is None
        or len(finetuner.test_split) == 0
    ):
        return None
    loader = accelerator.prepare(
        eval_dataloader(
            finetuner.test_split,
            finetuner.image_processor,
            batch_size=config.optim.per_device_eval_batch_size,
            num_workers=config.data.dataloader_num_workers,
        )
    )
    total_mass = (
        finetuner.test_split["total_mass"] if "total_mass" in finetuner.test_split.column_names else None
    )
    result, kept = evaluate_dataloader(
        finetuner.model,
        loader,
        accelerator,
        dish_ids=finetuner.test_split["dish_id"],
        total_mass=total_mass,
        description="test evaluation",
        keep_predictions=config.logging.num_validation_images,
    )
    if accelerator.is_main_process:
        write_evaluation_report(
            result,
            finetuner.output_dir / TEST_REPORT_DIRNAME,
            dataset=finetuner.test_split,
            panels=kept,
            extra={"num_processes": accelerator.num_processes},
        )
    return result.metrics


def release_model(
    finetuner: Finetuner, *, initial_validation: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Saves the best model to ``output_dir``, evaluates it on the test split, writes the card, pushes."""
    from n5k_hf.hub.model_card import write_model_card
    from n5k_hf.hub.upload import push_model_folder

    config, accelerator = finetuner.config, finetuner.accelerator
    if not load_best_weights(finetuner):
        logger.warning("no best model was kept (no validation improved); releasing the last weights")
    if accelerator.is_main_process:
        save_model_for_pipeline(
            accelerator.unwrap_model(finetuner.model), finetuner.image_processor, finetuner.output_dir
        )
        (finetuner.output_dir / "training_history.json").write_text(
            json.dumps(finetuner.state.history, indent=2) + "\n"
        )
    test_metrics = evaluate_test_split(finetuner)
    if accelerator.is_main_process:
        scatter = finetuner.output_dir / TEST_REPORT_DIRNAME / "plots" / "volume_scatter.png"
        K = finetuner.validation_split[0]["K"]
        dataset_name = config.data.dataset_name_or_path
        write_model_card(
            finetuner.output_dir,
            base_model=config.model.model_name_or_path,
            datasets=[dataset_name],
            test_metrics=test_metrics,
            training_config=config.to_dict(),
            volume_method=volume_method_description(K),
            hub_model_id=config.hub.hub_model_id,
            scatter_plot_path=scatter if scatter.is_file() else None,
            synthetic_data=_is_synthetic(dataset_name),
            license="apache-2.0" if config.model.model_config == "tiny" else None,
        )
        if config.hub.push_to_hub:
            push_model_folder(finetuner.output_dir, config.hub.hub_model_id, private=config.hub.hub_private)
    accelerator.wait_for_everyone()
    return test_metrics


def _is_synthetic(dataset_name: str) -> bool:
    """A converted synthetic dataset carries ``synthetic: true`` in its conversion report."""
    report = Path(dataset_name) / "conversion_report.json"
    if not report.is_file():
        return False
    try:
        return bool(json.loads(report.read_text()).get("synthetic", False))
    except (json.JSONDecodeError, AttributeError):
        return False
