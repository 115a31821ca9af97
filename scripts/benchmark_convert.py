"""Benchmark the Nutrition5k converter: throughput against bare PNG decoding, and peak memory vs size.

Thin entry point: the benchmark lives in ``n5k_hf/benchmarks/convert.py`` (``--help`` for options).
"""

import sys

from n5k_hf.benchmarks.convert import main
from n5k_hf.cli import exit_on_user_error

if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
