"""Evaluate a Depth Anything V2 Metric model on a converted Nutrition5k split: volume and depth metrics.

Example::

    python scripts/evaluate.py --model outputs/finetune --dataset data/n5k_converted --split test \\
        --output-dir outputs/eval_test [--batch-size 4] [--integrator heightmap] [--max-samples N] [--update-card]

Writes ``OUT/metrics.json``, ``OUT/per_dish.csv`` and ``OUT/plots/`` (see ``n5k_hf.evaluation``).
``--model`` takes a fine-tuned output folder or a Hub id (the base model, zero-shot). Several
processes: ``torchrun --nproc_per_node 2 scripts/evaluate.py ...`` (on CPU, ``accelerate launch
--cpu --num_processes 2`` of accelerate 1.15 starts only one); the metrics do not depend on the
process count.
"""

from __future__ import annotations

import argparse
import sys

from n5k_hf.cli import exit_on_user_error
from n5k_hf.geometry.volume import VOLUME_METHODS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="fine-tuned model folder or Hub id of a DAV2-metric model"
    )
    parser.add_argument(
        "--dataset", required=True, help="converted dataset folder (save_to_disk) or Hub dataset id"
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--output-dir", required=True, help="folder for metrics.json, per_dish.csv and plots/"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch and process (default: 4)")
    parser.add_argument(
        "--integrator",
        default="heightmap",
        choices=sorted(VOLUME_METHODS),
        help="volume integrator (default: heightmap)",
    )
    parser.add_argument(
        "--max-samples", type=int, default=None, help="evaluate only the first N dishes of the split"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="dataloader worker processes (default: 0)")
    parser.add_argument("--num-panels", type=int, default=3, help="depth panels to plot (default: 3)")
    parser.add_argument("--model-revision", default=None, help="Hub revision of --model")
    parser.add_argument("--dataset-revision", default=None, help="Hub revision of --dataset")
    parser.add_argument(
        "--update-card",
        action="store_true",
        help="rewrite the model folder's README.md card with these metrics (keeps finetune_config.yaml's config)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from accelerate import PartialState

    from n5k_hf.evaluation import run_evaluation

    args = parse_args(argv)
    metrics = run_evaluation(
        args.model,
        args.dataset,
        args.output_dir,
        split=args.split,
        batch_size=args.batch_size,
        integrator=args.integrator,
        max_samples=args.max_samples,
        num_workers=args.num_workers,
        num_panels=args.num_panels,
        update_card=args.update_card,
        model_revision=args.model_revision,
        dataset_revision=args.dataset_revision,
    )
    if not PartialState().is_main_process:
        return
    volume = (
        f"volume MAE {metrics['volume_mae_ml']:.1f} mL, MAPE {metrics['volume_mape']:.1f} %, "
        f"within 20 % {metrics['within_20pct']:.0f} %"
        if "volume_mae_ml" in metrics
        else "no measurable volume"
    )
    food = metrics["depth"]["food"]
    print(
        f"{metrics['num_evaluated']}/{metrics['num_dishes']} dishes: {volume}; food depth MAE "
        f"{food['mae_mm']:.1f} mm, AbsRel {food['abs_rel']:.3f}; written to {args.output_dir}"
    )


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
