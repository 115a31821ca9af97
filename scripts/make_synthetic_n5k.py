"""Write a synthetic Nutrition5k copy (real layout plus ground_truth/) for tests, demos and smoke runs.

Example: ``python scripts/make_synthetic_n5k.py --output-dir /tmp/n5k_synth --num-dishes 100 --seed 0``
(see ``n5k_hf.data.synthetic`` for the files and what ``ground_truth/volumes.csv`` means).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from n5k_hf.data.synthetic import make_synthetic_nutrition5k


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--num-dishes", type=int, required=True, help="number of dishes")
    parser.add_argument("--seed", type=int, required=True, help="seed; the same seed writes the same bytes")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of dishes in the test split")
    parser.add_argument("--num-workers", type=int, default=1, help="processes rendering dishes in parallel")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    dish_ids = make_synthetic_nutrition5k(
        args.output_dir,
        args.num_dishes,
        args.seed,
        test_fraction=args.test_fraction,
        num_workers=args.num_workers,
    )
    elapsed_s = time.perf_counter() - start
    print(f"wrote {len(dish_ids)} synthetic dishes to {args.output_dir} in {elapsed_s:.1f} s")


if __name__ == "__main__":
    main()
