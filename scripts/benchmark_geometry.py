"""Time the numpy volume integrators on one 640x480 ray-cast dish, pinned to one CPU core.

Thin entry point: the benchmark lives in ``n5k_hf/benchmarks/geometry.py`` (``--help`` for options).
"""

import sys

from n5k_hf.benchmarks.geometry import main
from n5k_hf.cli import exit_on_user_error

if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
