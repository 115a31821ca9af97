"""The main job on the embedded default: synthesise -> convert -> fine-tune -> evaluate -> model card.

python scripts/demo.py --output-dir outputs/demo [--num-dishes 120] [--key=value recipe overrides]
"""

import argparse
import sys

from n5k_hf.cli import exit_on_user_error
from n5k_hf.demo import SMOKE_RECIPE, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--num-dishes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default=str(SMOKE_RECIPE))
    args, overrides = parser.parse_known_args()
    run_demo(
        args.output_dir,
        num_dishes=args.num_dishes,
        seed=args.seed,
        recipe=args.recipe,
        overrides=tuple(overrides),
    )


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
