"""Overhead of the fine-tuning recipe's optimiser step over a bare training step, and loader throughput.

Thin entry point: the benchmark lives in ``n5k_hf/benchmarks/train.py`` (``--help`` for options).
"""

import sys

from n5k_hf.benchmarks.train import main
from n5k_hf.cli import exit_on_user_error

if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
