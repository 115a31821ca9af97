"""The README's main command: synthesise -> convert -> fine-tune -> evaluate -> model card, on CPU.

Every number it prints is measured by this run: the synthetic dishes' analytic volumes, the
conversion report, validation volume MAPE at step 0 and at the end of training (best model), and
the test metrics that also go into the model card.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from n5k_hf.data.convert import convert_nutrition5k
from n5k_hf.data.synthetic import make_synthetic_nutrition5k
from n5k_hf.training.config import parse_config
from n5k_hf.training.loop import run_finetune

SMOKE_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smoke" / "config.yaml"


@dataclass
class DemoResult:
    output_dir: Path
    volume_mape_step0: float
    volume_mape_best: float
    test_metrics: dict | None
    seconds: dict[str, float]


def print_reference_volumes(root: Path, limit: int = 8) -> None:
    """Prints the analytic food volumes the generator wrote (``ground_truth/volumes.csv``)."""
    with (root / "ground_truth" / "volumes.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    volumes = np.array([float(row["volume_ml"]) for row in rows])
    print(
        f"{len(rows)} synthetic dishes, analytic food volume: median {np.median(volumes):.1f} mL, "
        f"range {volumes.min():.1f}-{volumes.max():.1f} mL"
    )
    for row in rows[:limit]:
        print(
            f"  {row['dish_id']}  {float(row['volume_ml']):7.1f} mL  {row['num_items']} item(s) on a {row['support']}"
        )


def run_demo(
    output_dir: str | Path,
    *,
    num_dishes: int = 400,
    seed: int = 0,
    val_fraction: float = 0.2,
    recipe: str | Path = SMOKE_RECIPE,
    overrides: tuple[str, ...] = (),
) -> DemoResult:
    output_dir = Path(output_dir)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    n5k_root = output_dir / "nutrition5k-synthetic"
    print(f"[1/4] synthesising {num_dishes} dishes into {n5k_root}")
    make_synthetic_nutrition5k(n5k_root, num_dishes, seed, num_workers=2)
    print_reference_volumes(n5k_root)
    seconds["synthesise"] = time.perf_counter() - start

    start = time.perf_counter()
    dataset_dir = output_dir / "dataset"
    print(f"[2/4] converting to a Hugging Face DatasetDict in {dataset_dir} (external masks: ground truth)")
    report = convert_nutrition5k(
        n5k_root,
        dataset_dir,
        masks_dir=n5k_root / "ground_truth" / "masks",
        val_fraction=val_fraction,
        num_proc=2,
        overwrite=True,
    )
    print(f"      rows per split {report.converted}, skipped {report.skipped_by_reason or 'none'}")
    seconds["convert"] = time.perf_counter() - start

    start = time.perf_counter()
    model_dir = output_dir / "model"
    print(f"[3/4] fine-tuning with {os.path.relpath(recipe)} into {model_dir}")
    config = parse_config(
        [
            "--config",
            str(recipe),
            f"--dataset_name_or_path={dataset_dir}",
            f"--output_dir={model_dir}",
            *overrides,
        ]
    )
    result = run_finetune(config)
    seconds["finetune_and_test"] = time.perf_counter() - start

    step0 = result.initial_validation.get("volume_mape", float("nan"))
    best = (result.best_validation or {}).get("volume_mape", float("nan"))
    print("[4/4] results")
    print(
        f"      validation volume MAPE: step 0 {step0:.1f}% -> best {best:.1f}% "
        f"(step {(result.best_validation or {}).get('step')}, of {result.global_step} steps)"
    )
    if result.test_metrics:
        test = result.test_metrics
        print(
            f"      test ({test['num_evaluated']} dishes): volume MAE {test['volume_mae_ml']:.1f} mL, "
            f"MAPE {test['volume_mape']:.1f}%, within 20% {test['within_20pct']:.0f}%, "
            f"food depth MAE {test['depth']['food']['mae_mm']:.1f} mm"
        )
    print(f"      model card: {model_dir / 'README.md'}; plots: {model_dir / 'test_evaluation' / 'plots'}")
    print(f"      time: {', '.join(f'{name} {value:.0f} s' for name, value in seconds.items())}")
    summary = {
        "volume_mape_step0": step0,
        "volume_mape_best": best,
        "test_metrics": result.test_metrics,
        "seconds": seconds,
        "global_step": result.global_step,
    }
    (output_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(output_dir, step0, best, result.test_metrics, seconds)
