"""Benchmarks behind ``scripts/benchmark_*.py``: each prints ratios measured side by side in one run."""
