"""Overhead of the fine-tuning recipe's optimiser step over a bare training step, and loader throughput.

Example: ``python scripts/benchmark_train.py --repeats 15 --threads 1 [--profile]``

Everything is measured in one run, side by side, on the same pre-collated batches (taken once from
``Finetuner.train_loader``) and the same model:

- recipe step: ``Finetuner.training_step(batch)`` (accelerate ``accumulate``, forward,
  ``CompositeDepthLoss``, the gathered finite check, ``accelerator.backward``, ``clip_grad_norm_``,
  AdamW step, ``zero_grad``) plus ``lr_scheduler.step()``, as ``Finetuner.run`` does it;
- bare step: ``model(pixel_values).predicted_depth``, a masked L1 loss, ``loss.backward()``,
  ``optimizer.step()``, ``zero_grad()`` with an AdamW of the recipe's hyperparameters and parameter
  groups on a copy of the model (same weights), no accelerate wrappers.

Both run in stage 1 (encoder frozen) and stage 2 (all layers, volume loss on), alternating
recipe/bare step by step (ABAB, so drift of a shared machine cancels); the first ``--warmup`` rounds
are discarded and medians reported with their 10th-90th percentile spread, in wall and process CPU
time (the CPU time is steadier when other work shares the cores). The target is recipe / bare <= 1.15.

The dataloader (decode, augmentation, collate) is timed by iterating whole epochs of
``Finetuner.train_loader`` without the model, with the config's ``dataloader_num_workers`` and with
1 worker if the config says 0, interleaved with the step rounds. Its samples/s is compared with the
model's consumption rate (batch size / median recipe step): a ratio > 1 means the loader keeps up.

``--profile`` adds the recipe step split into its parts (cProfile cumulative times per step) and the
top operators of ``torch.profiler`` for the recipe and the bare step.

The synthetic dataset (``make_synthetic_nutrition5k`` then ``convert_nutrition5k``) is written
under ``--work-dir`` once and reused while ``--num-dishes`` and ``--seed`` are unchanged.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from n5k_hf.cli import exit_on_user_error

TARGET_RATIO = 1.15
DEFAULT_CONFIG = "recipes/smoke/config.yaml"
DATA_MARKER = "benchmark_data.json"
# Functions of the recipe step whose cumulative cProfile time is reported (``--profile``).
PROFILED_PARTS = {
    "forward (model)": ("depth_anything/modeling_depth_anything.py", "forward"),
    "loss: CompositeDepthLoss": ("n5k_hf/losses.py", "forward"),
    "loss: silog": ("n5k_hf/losses.py", "silog_loss"),
    "loss: gradient matching": ("n5k_hf/losses.py", "gradient_matching_loss"),
    "loss: plane": ("n5k_hf/losses.py", "plane_loss"),
    "loss: volume": ("n5k_hf/losses.py", "volume_loss"),
    "accelerator.gather (finite flag + log)": ("accelerate/accelerator.py", "gather"),
    "accelerator.backward": ("accelerate/accelerator.py", "backward"),
    "accelerator.clip_grad_norm_": ("accelerate/accelerator.py", "clip_grad_norm_"),
    "optimizer.step (AdamW)": ("accelerate/optimizer.py", "step"),
    "optimizer.zero_grad": ("accelerate/optimizer.py", "zero_grad"),
    "lr_scheduler.step": ("torch/optim/lr_scheduler.py", "step"),
}


# ------------------------------------------------------------------------------------------ data
def ensure_dataset(work_dir: Path, num_dishes: int, seed: int) -> Path:
    """The converted synthetic dataset under ``work_dir/dataset``, built unless already there.

    A marker file records ``num_dishes`` and ``seed``; a dataset built with others is rebuilt.
    """
    from n5k_hf.data.convert import convert_nutrition5k
    from n5k_hf.data.synthetic import make_synthetic_nutrition5k

    dataset_dir = work_dir / "dataset"
    marker = work_dir / DATA_MARKER
    wanted = {"num_dishes": num_dishes, "seed": seed}
    built = (dataset_dir / "dataset_dict.json").is_file() and marker.is_file()
    if built and json.loads(marker.read_text()) == wanted:
        return dataset_dir
    n5k_root = work_dir / "nutrition5k-synthetic"
    print(f"building {num_dishes} synthetic dishes (seed {seed}) in {n5k_root} -> {dataset_dir}")
    make_synthetic_nutrition5k(n5k_root, num_dishes, seed)
    convert_nutrition5k(
        n5k_root,
        dataset_dir,
        masks_dir=n5k_root / "ground_truth" / "masks",
        overwrite=True,
        progress=False,
    )
    marker.write_text(json.dumps(wanted))
    return dataset_dir


def build_finetuner(config_path: str, dataset_dir: Path, work_dir: Path, overrides: list[str]):
    """A set-up :class:`Finetuner` of ``config_path`` on ``dataset_dir`` (no trackers, output in work_dir)."""
    from n5k_hf.training.config import parse_config
    from n5k_hf.training.loop import Finetuner

    config = parse_config(
        [
            "--config",
            config_path,
            f"--dataset_name_or_path={dataset_dir}",
            f"--output_dir={work_dir / 'model'}",
            "--report_to=none",
            *overrides,
        ]
    )
    finetuner = Finetuner(config)
    finetuner.setup()
    return finetuner


# ------------------------------------------------------------------------------------ the steps
def masked_l1_loss(pred_depth_m: torch.Tensor, target_depth_m: torch.Tensor, valid_mask: torch.Tensor):
    """Mean ``|pred - target|`` over valid pixels; pred, target (B, H, W) metres, valid (B, H, W) bool."""
    valid = valid_mask & torch.isfinite(target_depth_m)
    difference = torch.where(valid, pred_depth_m - torch.nan_to_num(target_depth_m), 0.0)
    return difference.abs().sum() / valid.sum().clamp_min(1)


class BareTrainer:
    """Forward, masked L1, backward, AdamW step on a copy of the recipe's model: no accelerate."""

    def __init__(self, finetuner):
        from n5k_hf.modeling import encoder_decoder_parameter_groups

        self.model = copy.deepcopy(finetuner.accelerator.unwrap_model(finetuner.model)).train()
        groups = encoder_decoder_parameter_groups(self.model)
        recipe_groups = finetuner.optimizer.param_groups
        defaults = finetuner.optimizer.optimizer.defaults
        self.optimizer = torch.optim.AdamW(
            [
                {"params": groups[group["name"]], "lr": group["lr"], "weight_decay": group["weight_decay"]}
                for group in recipe_groups
            ],
            lr=defaults["lr"],
            betas=defaults["betas"],
            weight_decay=defaults["weight_decay"],
        )

    def step(self, batch: dict[str, Any]) -> float:
        pred = self.model(pixel_values=batch["pixel_values"]).predicted_depth
        loss = masked_l1_loss(pred, batch["depth_m"], batch["valid_mask"])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


def recipe_step(finetuner, batch: dict[str, Any]) -> bool:
    """One optimiser step of the recipe, as ``Finetuner.run`` takes it; False if the loss was non-finite."""
    components = finetuner.training_step(batch)
    finetuner.lr_scheduler.step()
    return components is not None


def set_stage(finetuner, bare: BareTrainer, stage: int) -> None:
    """Stage 1: encoder frozen, global step 0; stage 2: all layers, global step at stage 2's start
    (so the volume loss is on). The step count is held there: the loss terms stay the same."""
    from n5k_hf.modeling import freeze_encoder

    finetuner.state.global_step = 0 if stage == 1 else finetuner.stage2_start_step
    finetuner.apply_stage()
    freeze_encoder(bare.model, frozen=stage == 1)


# --------------------------------------------------------------------------------- measurement
def timed(function: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def loader_epoch(loader, epoch: int) -> int:
    """Iterates one epoch of ``loader`` (a prepared train loader); returns the samples seen."""
    loader.dataset.set_epoch(epoch)
    loader.set_epoch(epoch)
    return sum(len(batch["pixel_values"]) for batch in loader)


def spread(values: list[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile, min and max."""
    ordered = sorted(values)
    deciles = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else ordered * 9
    return {
        "median": statistics.median(ordered),
        "p10": deciles[0],
        "p90": deciles[-1],
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def profile_recipe(finetuner, bare: BareTrainer, batches: list[dict], stage: int, rounds: int) -> dict:
    """cProfile per-step cumulative times of the recipe's parts and torch.profiler top operators."""
    set_stage(finetuner, bare, stage)
    profiler = cProfile.Profile()
    steps = 0
    wall_start = time.perf_counter()
    profiler.enable()
    for _ in range(rounds):
        for batch in batches:
            recipe_step(finetuner, batch)
            steps += 1
    profiler.disable()
    profiled_wall_ms = 1e3 * (time.perf_counter() - wall_start) / steps
    stats = pstats.Stats(profiler)
    parts: dict[str, float] = {}
    for label, (filename, function) in PROFILED_PARTS.items():
        total = 0.0
        for (path, _line, name), (_calls, _primitive, _own, cumulative, _callers) in stats.stats.items():
            if path.endswith(filename) and name == function:
                total = max(total, cumulative)  # the outermost of nested functions of that name
        parts[label] = 1e3 * total / steps
    operators = {}
    for name, run in (("recipe", lambda b: recipe_step(finetuner, b)), ("bare", bare.step)):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for batch in batches:
                run(batch)
        averages = sorted(prof.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
        operators[name] = [
            (event.key, event.self_cpu_time_total / 1e3 / len(batches), event.count // len(batches))
            for event in averages[:12]
        ]
        operators[f"{name}_total_ms"] = sum(e.self_cpu_time_total for e in averages) / 1e3 / len(batches)
    return {
        "stage": stage,
        "steps": steps,
        "profiled_step_ms": profiled_wall_ms,
        "parts_ms": parts,
        "isolated_cpu_ms": recipe_parts_ms(finetuner, bare, batches[0], stage, repeats=10),
        **operators,
    }


def _median_cpu_ms(function: Callable[[], object], repeats: int) -> float:
    """Median process CPU milliseconds of ``repeats`` calls after one warm-up call."""
    function()
    return 1e3 * statistics.median(timed(function)[1] for _ in range(repeats))


def recipe_parts_ms(finetuner, bare: BareTrainer, batch: dict[str, Any], stage: int, repeats: int) -> dict:
    """Each extra part of the recipe step timed alone (median CPU ms), with the bare step's counterparts.

    The loss terms run on a leaf copy of the model's prediction: forward as the recipe computes it
    (with gradient when active, under ``no_grad`` when only logged) and backward of the weighted sum.
    """
    from n5k_hf.losses import gradient_matching_loss, plane_loss, silog_loss, volume_loss

    set_stage(finetuner, bare, stage)
    accelerator, loss_fn = finetuner.accelerator, finetuner.loss_fn
    step = finetuner.state.global_step
    model = finetuner.model
    with torch.no_grad():
        pred = model(pixel_values=batch["pixel_values"]).predicted_depth
    pred = pred.detach().requires_grad_()
    depth_range = loss_fn.depth_range
    target, valid, food, ring, K = (
        batch[key] for key in ("depth_m", "valid_mask", "food_mask", "ring_mask", "K")
    )
    terms = {
        "silog": lambda: silog_loss(
            pred,
            target,
            valid,
            lambd=loss_fn.lambd,
            food_mask=food,
            food_weight=loss_fn.food_weight,
            **depth_range,
        ),
        "grad": lambda: gradient_matching_loss(
            pred, target, valid, num_scales=loss_fn.num_gradient_scales, **depth_range
        ),
        "plane": lambda: plane_loss(pred, target, valid, ring, K, food_mask=food, **depth_range),
        "volume": lambda: volume_loss(pred, target, valid, food, ring, K, **depth_range),
    }
    parts: dict[str, float] = {}
    for name, compute in terms.items():
        active = loss_fn.weights[name] > 0 and (name != "volume" or step >= loss_fn.volume_loss_start_step)
        if active:
            parts[f"loss {name} forward"] = _median_cpu_ms(compute, repeats)
        else:

            def logged_only(compute=compute):
                with torch.no_grad():
                    compute()

            parts[f"loss {name} forward (no_grad, logged only)"] = _median_cpu_ms(logged_only, repeats)
    parts["CompositeDepthLoss forward (all terms)"] = _median_cpu_ms(
        lambda: loss_fn(pred, target, valid_mask=valid, food_mask=food, ring_mask=ring, K=K, step=step),
        repeats,
    )

    def composite_backward() -> None:
        total, _ = loss_fn(pred, target, valid_mask=valid, food_mask=food, ring_mask=ring, K=K, step=step)
        total.backward()
        pred.grad = None

    def l1_backward() -> None:
        masked_l1_loss(pred, target, valid).backward()
        pred.grad = None

    parts["CompositeDepthLoss forward + backward"] = _median_cpu_ms(composite_backward, repeats)
    parts["bare: masked L1 forward + backward"] = _median_cpu_ms(l1_backward, repeats)
    loss = pred.sum()
    parts["gather(finite flag).all().item()"] = _median_cpu_ms(
        lambda: accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all().item(), repeats
    )
    values = torch.zeros(5)
    parts["gather(log values).mean().tolist()"] = _median_cpu_ms(
        lambda: accelerator.gather(values[None]).mean(dim=0).tolist(), repeats
    )

    def enter_accumulate() -> None:
        with accelerator.accumulate(model):
            pass

    parts["accelerator.accumulate enter/exit"] = _median_cpu_ms(enter_accumulate, repeats)
    masked_l1_loss(model(pixel_values=batch["pixel_values"]).predicted_depth, target, valid).backward()
    max_norm = finetuner.config.optim.max_grad_norm
    parts["clip_grad_norm_"] = _median_cpu_ms(
        lambda: accelerator.clip_grad_norm_(model.parameters(), max_norm), repeats
    )
    finetuner.optimizer.zero_grad(set_to_none=True)
    parts["lr_scheduler.step"] = _median_cpu_ms(finetuner.lr_scheduler.step, repeats)
    return parts


def run_benchmark(
    *,
    config_path: str,
    work_dir: Path,
    num_dishes: int,
    seed: int,
    num_batches: int,
    repeats: int,
    warmup: int,
    overrides: list[str],
    profile: bool,
) -> dict:
    """Interleaved timings of recipe and bare steps (both stages) and of loader epochs; see the module doc."""
    from n5k_hf.data.transforms import collate_samples

    if repeats < 1 or warmup < 0 or num_batches < 1:
        raise ValueError(
            f"need repeats >= 1, warmup >= 0, num_batches >= 1; got {repeats}, {warmup}, {num_batches}"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset_dir = ensure_dataset(work_dir, num_dishes, seed)
    finetuner = build_finetuner(config_path, dataset_dir, work_dir, overrides)
    accelerator, config = finetuner.accelerator, finetuner.config
    batch_size = config.optim.per_device_train_batch_size

    finetuner.train_dataset.set_epoch(0)
    finetuner.train_loader.set_epoch(0)
    batches = []
    for batch in finetuner.train_loader:
        batches.append(batch)
        if len(batches) == num_batches:
            break
    bare = BareTrainer(finetuner)
    finetuner.model.train()

    loaders = {config.data.dataloader_num_workers: finetuner.train_loader}
    if config.data.dataloader_num_workers == 0:
        loaders[1] = accelerator.prepare_data_loader(
            torch.utils.data.DataLoader(
                finetuner.train_dataset,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                collate_fn=collate_samples,
                num_workers=1,
            )
        )

    names = [f"{kind}_stage{stage}" for stage in (1, 2) for kind in ("recipe", "bare")]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    loader_rates: dict[int, list[float]] = {workers: [] for workers in loaders}
    nonfinite_steps = 0
    for round_index in range(warmup + repeats):
        keep = round_index >= warmup
        for stage in (1, 2):
            set_stage(finetuner, bare, stage)
            for batch in batches:
                finite = True

                def run_recipe(batch=batch):
                    nonlocal finite
                    finite = recipe_step(finetuner, batch)

                for kind, run in (("recipe", run_recipe), ("bare", lambda batch=batch: bare.step(batch))):
                    seconds, cpu_seconds = timed(run)
                    if keep:
                        wall[f"{kind}_stage{stage}"].append(seconds)
                        cpu[f"{kind}_stage{stage}"].append(cpu_seconds)
                nonfinite_steps += not finite
        for workers, loader in loaders.items():
            start = time.perf_counter()
            samples = loader_epoch(loader, round_index)
            if keep:
                loader_rates[workers].append(samples / (time.perf_counter() - start))

    wall_stats = {name: spread(values) for name, values in wall.items()}
    cpu_stats = {name: spread(values) for name, values in cpu.items()}
    result: dict[str, Any] = {
        "config": config_path,
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "input_hw": list(batches[0]["pixel_values"].shape[-2:]),
        "label_hw": list(batches[0]["depth_m"].shape[-2:]),
        "num_batches": len(batches),
        "train_rows": len(finetuner.train_dataset),
        "repeats": repeats,
        "warmup": warmup,
        "nonfinite_recipe_steps": nonfinite_steps,
        "wall_s": wall_stats,
        "cpu_s": cpu_stats,
        "loader_samples_per_s": {workers: spread(rates) for workers, rates in loader_rates.items()},
        "stages": {},
    }
    for stage in (1, 2):
        recipe_s = wall_stats[f"recipe_stage{stage}"]["median"]
        result["stages"][stage] = {
            "ratio": recipe_s / wall_stats[f"bare_stage{stage}"]["median"],
            "cpu_ratio": cpu_stats[f"recipe_stage{stage}"]["median"]
            / cpu_stats[f"bare_stage{stage}"]["median"],
            # Ratio of each round's recipe step to the bare step right after it: its spread shows how
            # much of the ratio's noise the interleaving removed.
            "paired_ratio": spread(
                [r / b for r, b in zip(wall[f"recipe_stage{stage}"], wall[f"bare_stage{stage}"], strict=True)]
            ),
            "consumption_samples_per_s": batch_size / recipe_s,
        }
    if profile:
        result["profile"] = {
            stage: profile_recipe(finetuner, bare, batches, stage, rounds=3) for stage in (1, 2)
        }
    accelerator.end_training()
    return result


# -------------------------------------------------------------------------------------- report
def _ms(stats: dict[str, float]) -> str:
    return f"{1e3 * stats['median']:7.1f} ms  [p10 {1e3 * stats['p10']:6.1f}, p90 {1e3 * stats['p90']:6.1f}]"


def print_report(result: dict) -> None:
    height, width = result["input_hw"]
    print(
        f"{result['config']}: input {width}x{height}, labels {result['label_hw'][1]}x{result['label_hw'][0]}, "
        f"batch {result['batch_size']}, {result['num_batches']} fixed batches of {result['train_rows']} train rows"
    )
    print(
        f"torch.set_num_threads({result['torch_threads']}); {result['repeats']} interleaved rounds "
        f"(+{result['warmup']} warm-up discarded); medians [10th, 90th percentile]"
    )
    if result["nonfinite_recipe_steps"]:
        print(
            f"WARNING: {result['nonfinite_recipe_steps']} recipe steps had a non-finite loss (skipped backward)"
        )
    for stage, label in ((1, "stage 1 (encoder frozen)"), (2, "stage 2 (all layers, volume loss on)")):
        summary = result["stages"][stage]
        print(f"{label}")
        for kind in ("recipe", "bare"):
            name = f"{kind}_stage{stage}"
            print(f"  {kind:6s} step  wall {_ms(result['wall_s'][name])}   CPU {_ms(result['cpu_s'][name])}")
        verdict = "meets" if summary["ratio"] <= TARGET_RATIO else "MISSES"
        paired = summary["paired_ratio"]
        print(
            f"  recipe / bare  {summary['ratio']:.3f} wall ({verdict} the target <= {TARGET_RATIO}), "
            f"{summary['cpu_ratio']:.3f} CPU; per-pair ratio median {paired['median']:.3f} "
            f"[p10 {paired['p10']:.3f}, p90 {paired['p90']:.3f}]"
        )
    print("dataloader (decode + augmentation + collate, no model), whole epochs")
    for workers, stats in result["loader_samples_per_s"].items():
        line = f"  num_workers={workers}: {stats['median']:7.1f} samples/s [p10 {stats['p10']:.1f}, p90 {stats['p90']:.1f}]"
        ratios = ", ".join(
            f"stage {stage} {stats['median'] / result['stages'][stage]['consumption_samples_per_s']:.2f}"
            for stage in (1, 2)
        )
        print(f"{line}; loader / model consumption: {ratios}")
    consumption = ", ".join(
        f"stage {stage} {result['stages'][stage]['consumption_samples_per_s']:.1f}" for stage in (1, 2)
    )
    print(f"  model consumption (batch / median recipe step): {consumption} samples/s (> 1 above: keeps up)")
    for stage, report in result.get("profile", {}).items():
        print(
            f"profile, stage {stage}: cProfile cumulative ms per recipe step ({report['steps']} steps, "
            f"{report['profiled_step_ms']:.1f} ms/step under cProfile)"
        )
        for label, milliseconds in report["parts_ms"].items():
            print(f"  {label:32s} {milliseconds:7.2f}")
        print(f"  parts timed alone on one batch (median CPU ms over 10 calls), stage {stage}")
        for label, milliseconds in report["isolated_cpu_ms"].items():
            print(f"    {label:48s} {milliseconds:7.2f}")
        for kind in ("recipe", "bare"):
            print(
                f"  torch.profiler top self-CPU ops, {kind} step (total {report[f'{kind}_total_ms']:.1f} ms/step)"
            )
            for key, milliseconds, count in report[kind]:
                print(f"    {key:40s} {milliseconds:7.2f} ms x{count}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"recipe YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--work-dir", type=Path, default=Path("outputs/benchmark_train"), help="dataset cache and run folder"
    )
    parser.add_argument("--num-dishes", type=int, default=48, help="synthetic dishes (default: 48)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dishes (default: 0)")
    parser.add_argument("--num-batches", type=int, default=3, help="fixed batches per round (default: 3)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default: 15)")
    parser.add_argument("--warmup", type=int, default=2, help="discarded rounds first (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--profile", action="store_true", help="also profile the recipe step")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_benchmark(
        config_path=args.config,
        work_dir=args.work_dir,
        num_dishes=args.num_dishes,
        seed=args.seed,
        num_batches=args.num_batches,
        repeats=args.repeats,
        warmup=args.warmup,
        overrides=[f"--{item}" for item in args.overrides],
        profile=args.profile,
    )
    if args.json:
        print(json.dumps(result))
        return
    print_report(result)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
