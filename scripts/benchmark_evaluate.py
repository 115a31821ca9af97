"""Throughput of the evaluation path against the bare model forward on the same batches (CPU, tiny model).

Thin entry point: the benchmark lives in ``n5k_hf/benchmarks/evaluate.py`` (``--help`` for options).
"""

import sys

from n5k_hf.benchmarks.evaluate import main
from n5k_hf.cli import exit_on_user_error

if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
