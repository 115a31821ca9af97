"""The fine-tuning loop: the canonical accelerate loop with two stages and resumable checkpoints.

Stage 1 trains neck and head with the DINOv2 encoder frozen; stage 2 trains all layers with the
learning rates scaled by ``stage2_lr_scale``. Both stages live in one run and one optimiser (two
parameter groups: encoder and decoder), so a checkpoint taken anywhere restores the stage from the
step count alone.

What a checkpoint holds (``accelerator.save_state``): model, optimiser, LR scheduler, every
process's RNG states, the dataloader position (through the step count) and :class:`TrainingState`
(step, best score, early-stopping counter, non-finite step counters). Augmentation does not depend
on any RNG state: sample ``i`` of epoch ``e`` is augmented with a seed derived from
``(seed, e, i)``, so a resumed run sees the same samples as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    set_seed,
)
from tqdm.auto import tqdm

from n5k_hf.data.loading import get_split, load_n5k_dataset
from n5k_hf.data.transforms import TrainTransform, TransformedDataset, collate_samples
from n5k_hf.evaluation import EvaluationResult, eval_dataloader, evaluate_dataloader
from n5k_hf.losses import CompositeDepthLoss
from n5k_hf.modeling import (
    build_image_processor,
    encoder_decoder_parameter_groups,
    freeze_encoder,
    load_depth_model,
    save_model_for_pipeline,
)
from n5k_hf.training.checkpointing import (
    checkpoint_dir,
    publish_checkpoint,
    resolve_resume_checkpoint,
    rotate_checkpoints,
    step_of_checkpoint,
    temporary_checkpoint_dir,
)
from n5k_hf.training.config import FinetuneConfig
from n5k_hf.training.schedule import build_lr_lambda

logger = logging.getLogger(__name__)

BEST_MODEL_DIRNAME = "best_model"
VALIDATION_METRIC = "volume_mape"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimiser steps had a NaN/inf loss; a checkpoint was saved first."""


@dataclasses.dataclass
class TrainingState:
    """Loop counters that a checkpoint must restore (registered with ``register_for_checkpointing``)."""

    global_step: int = 0
    best_metric: float = math.inf
    best_step: int | None = None
    epochs_without_improvement: int = 0
    nonfinite_steps_total: int = 0
    nonfinite_steps_in_a_row: int = 0
    history: list = dataclasses.field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclasses.dataclass
class FinetuneResult:
    output_dir: Path
    global_step: int
    initial_validation: dict[str, Any]
    best_validation: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    stopped_early: bool


def _report_to(value: str) -> list[str] | str | None:
    if value in ("none", "", None):
        return None
    if value == "all":
        return "all"
    return [tracker.strip() for tracker in value.split(",") if tracker.strip()]


def _log_scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_log_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and math.isfinite(float(value)):
            flat[f"{prefix}{key}"] = float(value)
    return flat


class Finetuner:
    """One fine-tuning run; :meth:`run` executes it. Attributes are public for tests and tools."""

    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.output_dir = Path(config.optim.output_dir)
        self.accelerator = Accelerator(
            # Without CUDA, cpu=True makes torchrun's processes form one DDP group over gloo
            # (otherwise each would train alone; see README "Several processes on CPU").
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
            log_with=_report_to(config.logging.report_to),
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            # backbone.embeddings.mask_token and the first fusion layer's residual_layer1 get no
            # gradient in DAV2 (REFERENCE.md); DDP must be told, as the official script does.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        set_seed(config.optim.seed)
        self.state = TrainingState()

    # ----------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        config, accelerator = self.config, self.accelerator
        data = config.data
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        with accelerator.main_process_first():
            dataset = load_n5k_dataset(data.dataset_name_or_path, revision=data.dataset_revision)
        source = data.dataset_name_or_path
        self.train_split = get_split(
            dataset, data.train_split, source=source, max_samples=data.max_train_samples
        )
        self.validation_split = get_split(
            dataset, data.validation_split, source=source, max_samples=data.max_eval_samples
        )
        self.test_split = dataset.get(data.test_split)
        if self.test_split is not None and data.max_eval_samples is not None:
            self.test_split = get_split(
                dataset, data.test_split, source=source, max_samples=data.max_eval_samples
            )
        stored_hw = np.asarray(self.train_split[0]["depth"]).shape

        self.model = load_depth_model(
            config.model.model_name_or_path,
            revision=config.model.model_revision,
            model_config=config.model.model_config,
            max_depth=config.model.max_depth,
            seed=config.optim.seed,
        )
        self.image_processor = build_image_processor(size=data.image_size)
        self.max_depth_m = float(self.model.config.max_depth)

        self.train_dataset = TransformedDataset(
            self.train_split,
            TrainTransform(
                data.image_size,
                stored_hw=stored_hw,
                crop_scale_min=data.crop_scale_min,
                color_jitter=data.color_jitter,
            ),
            seed=config.optim.seed,
        )
        train_loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=config.optim.per_device_train_batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collate_samples,
            num_workers=data.dataloader_num_workers,
        )
        validation_loader = eval_dataloader(
            self.validation_split,
            self.image_processor,
            batch_size=config.optim.per_device_eval_batch_size,
            num_workers=data.dataloader_num_workers,
        )
        if len(train_loader) == 0:
            raise ValueError(
                f"{source}: train split has {len(self.train_split)} rows, fewer than one batch of "
                f"{config.optim.per_device_train_batch_size}"
            )

        groups = encoder_decoder_parameter_groups(self.model)
        optim = config.optim
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "params": groups["encoder"],
                    "lr": optim.learning_rate * optim.encoder_lr_ratio,
                    "name": "encoder",
                },
                {"params": groups["decoder"], "lr": optim.learning_rate, "name": "decoder"},
            ],
            lr=optim.learning_rate,
            betas=(optim.adam_beta1, optim.adam_beta2),
            weight_decay=optim.weight_decay,
        )
        self.model, self.optimizer, self.train_loader, self.validation_loader = accelerator.prepare(
            self.model, self.optimizer, train_loader, validation_loader
        )
        # Step counts after prepare: the prepared loader holds this process's share of the batches.
        self.steps_per_epoch = math.ceil(len(self.train_loader) / optim.gradient_accumulation_steps)
        if optim.max_train_steps is None:
            self.max_train_steps = optim.num_train_epochs * self.steps_per_epoch
        else:
            self.max_train_steps = optim.max_train_steps
        self.num_epochs = math.ceil(self.max_train_steps / self.steps_per_epoch)
        self.stage2_start_step = min(config.stages.stage1_epochs * self.steps_per_epoch, self.max_train_steps)
        # The scheduler is not prepared: it is stepped exactly once per optimiser step on every
        # process, and saved/restored through register_for_checkpointing.
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            build_lr_lambda(
                scheduler_type=optim.lr_scheduler_type,
                total_steps=self.max_train_steps,
                warmup_steps=optim.lr_warmup_steps,
                stage2_start_step=self.stage2_start_step,
                stage2_scale=config.stages.stage2_lr_scale,
                poly_power=optim.poly_power,
            ),
        )
        accelerator.register_for_checkpointing(self.lr_scheduler)
        accelerator.register_for_checkpointing(self.state)

        volume_start = config.loss.volume_loss_start_step
        self.loss_fn = CompositeDepthLoss(
            w_silog=config.loss.w_silog,
            w_grad=config.loss.w_grad,
            w_plane=config.loss.w_plane,
            w_volume=config.loss.w_volume,
            food_weight=config.loss.food_weight,
            volume_loss_start_step=self.stage2_start_step if volume_start is None else volume_start,
            min_depth_m=config.loss.min_depth,
            max_depth_m=self.max_depth_m,
        )

        if accelerator.is_main_process:
            (self.output_dir / "finetune_config.yaml").write_text(
                yaml.safe_dump(config.to_dict(), sort_keys=False)
            )
        tracker_config = {
            k: v for k, v in config.to_dict().items() if isinstance(v, int | float | str | bool)
        }
        accelerator.init_trackers("n5k-hf-finetune", config=tracker_config)

    # ----------------------------------------------------------------------------- components
    def in_stage2(self, step: int) -> bool:
        return step >= self.stage2_start_step

    def apply_stage(self) -> None:
        freeze_encoder(
            self.accelerator.unwrap_model(self.model), frozen=not self.in_stage2(self.state.global_step)
        )

    def save_checkpoint(self) -> Path:
        """Every process writes its part into ``checkpoint-{step}.tmp``; the main one publishes it."""
        accelerator = self.accelerator
        step = self.state.global_step
        temporary = temporary_checkpoint_dir(self.output_dir, step)
        if accelerator.is_main_process and temporary.exists():
            shutil.rmtree(temporary)  # left by a run killed while writing it
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        final = checkpoint_dir(self.output_dir, step)
        if accelerator.is_main_process:
            publish_checkpoint(temporary, final)
            keep = {self.state.best_step} if self.state.best_step is not None else set()
            for removed in rotate_checkpoints(
                self.output_dir, self.config.logging.checkpoints_total_limit, keep_steps=keep
            ):
                logger.info("removed old checkpoint %s", removed)
        accelerator.wait_for_everyone()
        return final

    def validate(self, description: str) -> EvaluationResult:
        result, kept = evaluate_dataloader(
            self.model,
            self.validation_loader,
            self.accelerator,
            dish_ids=self.validation_split["dish_id"],
            description=description,
            keep_predictions=self.config.logging.num_validation_images,
        )
        self.validation_images = kept
        self.model.train()
        return result

    def log_validation_images(self, step: int) -> None:
        """Depth error panels to trackers that take images (tensorboard, wandb)."""
        accelerator = self.accelerator
        if not accelerator.is_main_process or not self.validation_images or not accelerator.trackers:
            return
        from n5k_hf.plots import depth_error_image

        images = [depth_error_image(item["depth_m"], item["pred_depth_m"]) for item in self.validation_images]
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images(
                    "validation/depth_error", np.stack(images), step, dataformats="NHWC"
                )
            elif tracker.name == "wandb":
                import wandb

                tracker.log({"validation/depth_error": [wandb.Image(image) for image in images]}, step=step)

    def update_best(self, result: EvaluationResult) -> bool:
        """Keeps the best model (lowest validation volume MAPE); returns True when it improved."""
        score = result.metrics.get(VALIDATION_METRIC, math.inf)
        if score < self.state.best_metric:
            self.state.best_metric = float(score)
            self.state.best_step = self.state.global_step
            self.state.epochs_without_improvement = 0
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                best_dir = self.output_dir / BEST_MODEL_DIRNAME
                if best_dir.exists():
                    shutil.rmtree(best_dir)
                save_model_for_pipeline(
                    self.accelerator.unwrap_model(self.model), self.image_processor, best_dir
                )
                (best_dir / "validation_metrics.json").write_text(json.dumps(result.metrics, indent=2))
            self.accelerator.wait_for_everyone()
            return True
        self.state.epochs_without_improvement += 1
        return False

    def training_step(self, batch: dict[str, Any]) -> dict[str, float] | None:
        """One micro-batch; returns the (gathered, mean) loss components or None when non-finite."""
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            pred = self.model(pixel_values=batch["pixel_values"]).predicted_depth
            if pred.shape[-2:] != batch["depth_m"].shape[-2:]:
                pred = torch.nn.functional.interpolate(
                    pred[:, None], size=batch["depth_m"].shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
            loss, components = self.loss_fn(
                pred,
                batch["depth_m"],
                valid_mask=batch["valid_mask"],
                food_mask=batch["food_mask"],
                ring_mask=batch["ring_mask"],
                K=batch["K"],
                step=self.state.global_step,
            )
            # Every process must take the same decision, or DDP waits forever on a skipped backward.
            finite = accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all().item()
            if finite:
                accelerator.backward(loss)
                if accelerator.sync_gradients and self.config.optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.model.parameters(), self.config.optim.max_grad_norm)
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            return None
        values = torch.stack([loss.detach().float(), *[v.detach().float() for v in components.values()]])
        values = accelerator.gather(values[None]).mean(dim=0)
        return dict(zip(["loss", *components], values.tolist()))

    # ---------------------------------------------------------------------------------- loop
    def run(self) -> FinetuneResult:
        config, accelerator, state = self.config, self.accelerator, self.state
        self.setup()
        resume_path = resolve_resume_checkpoint(config.logging.resume_from_checkpoint, self.output_dir)
        if resume_path is not None:
            accelerator.print(f"Resuming from {resume_path}")
            accelerator.load_state(str(resume_path))
            if state.global_step != step_of_checkpoint(resume_path):
                raise RuntimeError(f"{resume_path}: training state says step {state.global_step}")
        elif config.logging.resume_from_checkpoint == "latest":
            accelerator.print(f"No checkpoint in {self.output_dir}: starting from scratch")

        batches_per_epoch = len(self.train_loader)
        accumulation = config.optim.gradient_accumulation_steps
        completed_batches = state.global_step * accumulation
        start_epoch = completed_batches // batches_per_epoch
        skip_batches = completed_batches % batches_per_epoch

        initial_validation = None
        if resume_path is None:
            initial = self.validate("validation (step 0)")
            initial_validation = initial.metrics
            state.history.append({"step": 0, "epoch": 0, **initial.metrics})
            accelerator.log(_log_scalars(initial.metrics, "validation/"), step=0)
            accelerator.print(
                f"step 0: validation volume MAPE {initial.metrics.get(VALIDATION_METRIC, math.nan):.2f}%"
            )
        else:
            initial_validation = state.history[0] if state.history else None

        steps_per = self.config.logging.checkpointing_steps
        every_n_steps = int(steps_per) if steps_per not in (None, "epoch") else None
        progress = tqdm(
            total=self.max_train_steps,
            initial=state.global_step,
            desc="training",
            disable=not accelerator.is_local_main_process,
        )
        stopped_early = False
        self.model.train()
        for epoch in range(start_epoch, self.num_epochs):
            if state.global_step >= self.max_train_steps:
                break
            self.train_dataset.set_epoch(epoch)
            self.train_loader.set_epoch(epoch)
            loader = self.train_loader
            if epoch == start_epoch and skip_batches:
                loader = accelerator.skip_first_batches(self.train_loader, skip_batches)
            self.apply_stage()
            running: list[dict[str, float]] = []
            for batch in loader:
                components = self.training_step(batch)
                if components is None:
                    state.nonfinite_steps_total += 1
                    state.nonfinite_steps_in_a_row += 1
                    logger.warning(
                        "non-finite loss at step %d (%d in a row)",
                        state.global_step,
                        state.nonfinite_steps_in_a_row,
                    )
                    if state.nonfinite_steps_in_a_row >= config.optim.max_consecutive_nonfinite_steps:
                        path = self.save_checkpoint()
                        raise NonFiniteLossError(
                            f"{state.nonfinite_steps_in_a_row} consecutive non-finite losses at step {state.global_step}; "
                            f"saved {path}. Lower the learning rate or check the data, then resume from it."
                        )
                else:
                    state.nonfinite_steps_in_a_row = 0
                    running.append(components)
                if not accelerator.sync_gradients:
                    continue
                self.lr_scheduler.step()
                state.global_step += 1
                progress.update(1)
                if self.in_stage2(state.global_step) != self.in_stage2(state.global_step - 1):
                    self.apply_stage()
                if running and state.global_step % config.logging.logging_steps == 0:
                    # Inactive loss terms are NaN in the components: they are left out of the logs.
                    logs = {
                        f"train/{key}": value
                        for key in running[0]
                        if math.isfinite(value := float(np.mean([r[key] for r in running])))
                    }
                    for group in self.optimizer.param_groups:
                        logs[f"lr/{group['name']}"] = group["lr"]
                    logs["train/nonfinite_steps"] = state.nonfinite_steps_total
                    accelerator.log(logs, step=state.global_step)
                    progress.set_postfix(loss=f"{logs['train/loss']:.4f}")
                    running = []
                end_of_epoch = state.global_step % self.steps_per_epoch == 0
                if every_n_steps and state.global_step % every_n_steps == 0 and not end_of_epoch:
                    self.save_checkpoint()
                if state.global_step >= self.max_train_steps:
                    break

            result = self.validate(f"validation (epoch {epoch + 1})")
            improved = self.update_best(result)
            state.history.append({"step": state.global_step, "epoch": epoch + 1, **result.metrics})
            accelerator.log(_log_scalars(result.metrics, "validation/"), step=state.global_step)
            self.log_validation_images(state.global_step)
            accelerator.print(
                f"epoch {epoch + 1}: step {state.global_step}, validation volume MAPE "
                f"{result.metrics.get(VALIDATION_METRIC, math.nan):.2f}%{' (best)' if improved else ''}"
            )
            if steps_per == "epoch" or (every_n_steps and state.global_step % every_n_steps == 0):
                self.save_checkpoint()
            patience = config.stages.early_stopping_patience
            if patience is not None and state.epochs_without_improvement >= patience:
                accelerator.print(
                    f"early stopping: no improvement of validation {VALIDATION_METRIC} for {patience} epochs"
                )
                stopped_early = True
                break
        progress.close()
        return self.finish(initial_validation, stopped_early)

    def finish(self, initial_validation: dict[str, Any] | None, stopped_early: bool) -> FinetuneResult:
        """Final model = the best one (by validation volume MAPE), saved for ``pipeline``; test metrics."""
        from n5k_hf.training.release import release_model

        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        test_metrics = release_model(self, initial_validation=initial_validation)
        accelerator.end_training()
        best = next((h for h in self.state.history if h["step"] == self.state.best_step), None)
        return FinetuneResult(
            output_dir=self.output_dir,
            global_step=self.state.global_step,
            initial_validation=initial_validation or {},
            best_validation=best,
            test_metrics=test_metrics,
            stopped_early=stopped_early,
        )


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    return Finetuner(config).run()
