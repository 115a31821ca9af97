"""Fine-tune Depth Anything V2 Metric on a converted Nutrition5k dataset.

    accelerate launch --config_file accelerate_config.yaml recipes/finetune.py \
        --config recipes/dav2-metric-indoor-large/n5k/config.yaml [--key=value ...]

The YAML gives defaults, ``--key=value`` flags override them; see n5k_hf/training/config.py.
"""

import sys

from n5k_hf.cli import exit_on_user_error
from n5k_hf.training.config import parse_config
from n5k_hf.training.loop import run_finetune


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    result = run_finetune(config)
    print(f"Model saved to {result.output_dir} after {result.global_step} steps")


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
