"""Convert Nutrition5k (or a synthetic copy) into a Hugging Face DatasetDict on disk.

Usage:
    python scripts/convert_nutrition5k.py --n5k-root ROOT --output-dir OUT \\
        [--masks-dir DIR] [--val-fraction 0.1] [--seed 42] [--num-proc N] \\
        [--integrator heightmap] [--push-to-hub REPO_ID [--private]] [--strict] [--overwrite]

Writes OUT (``datasets.load_from_disk(OUT)``), OUT/volumes.csv and OUT/conversion_report.json; see
``n5k_hf.data.convert`` for the splits, the masks, the volumes and the skip reasons. Bad input
(missing root or split file, existing OUT without --overwrite, a bad dish with --strict) ends with
one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import os

# One BLAS thread per process: the conversion is parallel over dishes (--num-proc), and multi-threaded
# BLAS on small (N, 3) @ (3, 3) products is several times slower on a busy machine. Set before numpy loads.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import sys  # noqa: E402

from n5k_hf.allocator import reuse_freed_memory  # noqa: E402
from n5k_hf.cli import exit_on_user_error  # noqa: E402
from n5k_hf.data.convert import convert_nutrition5k, push_converted_dataset  # noqa: E402
from n5k_hf.data.masks import DepthMaskConfig  # noqa: E402
from n5k_hf.geometry.volume import VOLUME_METHODS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n5k-root", required=True, help="Nutrition5k root (imagery/, dish_ids/, metadata/)")
    parser.add_argument("--output-dir", required=True, help="folder to write the converted dataset into")
    parser.add_argument("--masks-dir", help="external food masks dish_<id>.png (non-zero = food)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of depth_train for validation")
    parser.add_argument("--seed", type=int, default=42, help="seed of the validation draw")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--integrator", default="heightmap", choices=sorted(VOLUME_METHODS), help="volume method"
    )
    parser.add_argument(
        "--height-threshold-mm",
        type=float,
        default=DepthMaskConfig.height_threshold_m * 1e3,
        help="depth fallback mask: food starts this high above the plate or bowl floor",
    )
    parser.add_argument("--strict", action="store_true", help="stop with an error at the first bad dish")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="also push the dataset and its card to the Hub"
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # this process writes the Arrow shards (and converts, with --num-proc 1)
    if args.private and not args.push_to_hub:
        raise ValueError("--private needs --push-to-hub REPO_ID")
    report = convert_nutrition5k(
        args.n5k_root,
        args.output_dir,
        masks_dir=args.masks_dir,
        val_fraction=args.val_fraction,
        seed=args.seed,
        num_proc=args.num_proc,
        integrator=args.integrator,
        strict=args.strict,
        mask_config=DepthMaskConfig(height_threshold_m=args.height_threshold_mm * 1e-3),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(report.summary())
    if args.push_to_hub:
        push_converted_dataset(args.output_dir, args.push_to_hub, private=args.private)
        print(f"pushed {args.output_dir} to the Hub dataset {args.push_to_hub}")


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
