"""Benchmark the Nutrition5k converter: throughput against bare PNG decoding, and peak memory vs size.

Usage:
    python scripts/benchmark_convert.py [--sizes 200,2000] [--num-proc 2] [--cache-dir DIR] [--seed 0]

For each size a synthetic Nutrition5k tree is generated once into ``--cache-dir`` (reused by later
runs). Then, on the smallest size:

* decode limit: every dish's ``rgb.png`` and ``depth_raw.png`` read and fully decoded (OpenCV) in a
  pool of ``--num-proc`` processes: the throughput of doing nothing but decoding, with the same number
  of processes as the converter. Dishes/s.
* converter: ``scripts/convert_nutrition5k.py --num-proc N`` end to end (validation, masks, planes,
  volumes, Arrow writes, ``save_to_disk``), with the depth fallback masks and with external masks.
  Dishes/s and its ratio to the decode limit (issue target: >= 0.6).

And for every size, the converter's (depth fallback masks) peak memory: the largest resident set of
any single process of the run (``wait4`` rusage, which folds in the reaped worker processes), and
the largest sum of resident sets over the whole process tree sampled every 50 ms from /proc. The
ratio between the largest and the smallest size is the streaming check (target: <= 1.3).
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from multiprocessing import Pool  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from n5k_hf.cli import exit_on_user_error  # noqa: E402
from n5k_hf.data.nutrition5k import Nutrition5kLayout  # noqa: E402
from n5k_hf.data.synthetic import make_synthetic_nutrition5k  # noqa: E402

CONVERT_SCRIPT = Path(__file__).with_name("convert_nutrition5k.py")
COMPLETE_MARKER = ".benchmark-complete"
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class RunStats:
    wall_s: float
    """Whole run: interpreter start-up, imports, conversion, save_to_disk."""
    convert_s: float
    """Inside `convert_nutrition5k` (the report's ``elapsed_s``)."""
    max_process_rss_mib: float
    max_tree_rss_mib: float
    max_tree_anon_mib: float


def synthetic_tree(cache_dir: Path, num_dishes: int, seed: int, num_workers: int) -> Path:
    """A synthetic tree of ``num_dishes`` in ``cache_dir``, generated on first use."""
    root = cache_dir / f"synthetic-{num_dishes}-seed{seed}"
    if not (root / COMPLETE_MARKER).is_file():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        print(f"generating {num_dishes} synthetic dishes into {root} ...", flush=True)
        make_synthetic_nutrition5k(root, num_dishes, seed, num_workers=num_workers)
        (root / COMPLETE_MARKER).touch()
        print(f"  took {time.perf_counter() - started:.0f} s", flush=True)
    return root


def _decode_dish(paths: tuple[str, str]) -> int:
    rgb_path, depth_path = paths
    rgb = cv2.imdecode(np.fromfile(rgb_path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    depth = cv2.imdecode(np.fromfile(depth_path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    return int(rgb.shape[0] + depth.shape[0])


def decode_limit_dishes_per_s(root: Path, num_proc: int) -> tuple[float, int]:
    layout = Nutrition5kLayout(root)
    dish_ids = layout.split_ids("depth_train") + layout.split_ids("depth_test")
    paths = [(str(layout.rgb_path(d)), str(layout.depth_raw_path(d))) for d in dish_ids]
    for path_pair in paths[:20]:  # warm the page cache like the converter's own first pass would not
        _decode_dish(path_pair)
    with Pool(num_proc) as pool:
        started = time.perf_counter()
        pool.map(_decode_dish, paths, chunksize=8)
        elapsed_s = time.perf_counter() - started
    return len(paths) / elapsed_s, len(paths)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def _rss_kib(pid: int) -> tuple[int, int]:
    """(resident set, anonymous part of it) of ``pid`` in KiB; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0])
    except (OSError, KeyError):
        return 0, 0


def run_converter(root: Path, output_dir: Path, num_proc: int, masks_dir: Path | None) -> RunStats:
    """Run the conversion script in a child process; wall time and peak memory."""
    shutil.rmtree(output_dir, ignore_errors=True)
    command = [sys.executable, str(CONVERT_SCRIPT), "--n5k-root", str(root), "--output-dir", str(output_dir),
               "--num-proc", str(num_proc), "--no-progress"]  # fmt: skip
    if masks_dir is not None:
        command += ["--masks-dir", str(masks_dir)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tree_peak_kib = anon_peak_kib = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal tree_peak_kib, anon_peak_kib
        while not done.wait(0.05):
            sizes = [_rss_kib(pid) for pid in _descendants(process.pid)]
            tree_peak_kib = max(tree_peak_kib, sum(rss for rss, _ in sizes))
            anon_peak_kib = max(anon_peak_kib, sum(anon for _, anon in sizes))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read().decode(errors="replace")
    _, status, rusage = os.wait4(process.pid, 0)
    wall_s = time.perf_counter() - started
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"conversion of {root} failed (exit {process.returncode}):\n{output}")
    report = json.loads((output_dir / "conversion_report.json").read_text(encoding="utf-8"))
    shutil.rmtree(output_dir, ignore_errors=True)
    return RunStats(
        wall_s, report["elapsed_s"], rusage.ru_maxrss / 1024, tree_peak_kib / 1024, anon_peak_kib / 1024
    )


def best_of(repeats: int, run) -> RunStats:
    """The fastest of ``repeats`` runs (the machine is shared: slower runs measure other load)."""
    return min((run() for _ in range(repeats)), key=lambda stats: stats.wall_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,2000", help="comma-separated numbers of synthetic dishes")
    parser.add_argument("--num-proc", type=int, default=2, help="converter and decode processes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per throughput measurement (best kept)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "n5k_hf_benchmark"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic trees")
    args = parser.parse_args(argv)
    sizes = sorted(int(size) for size in args.sizes.split(","))
    if not sizes or sizes[0] < 10:
        raise ValueError(f"--sizes needs numbers of dishes >= 10, got {args.sizes!r}")
    cache_dir = Path(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    roots = {size: synthetic_tree(cache_dir, size, args.seed, args.num_proc) for size in sizes}

    smallest = roots[sizes[0]]
    limit, num_dishes = max(decode_limit_dishes_per_s(smallest, args.num_proc) for _ in range(args.repeats))
    print(f"\nthroughput on {num_dishes} dishes, {args.num_proc} processes, best of {args.repeats} "
          f"(load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")  # fmt: skip
    print(f"  decode limit (rgb + depth PNG, OpenCV): {limit:6.1f} dishes/s")
    for label, masks_dir in (
        ("depth fallback masks", None),
        ("external masks", smallest / "ground_truth" / "masks"),
    ):
        stats = best_of(
            args.repeats,
            lambda masks_dir=masks_dir: run_converter(smallest, cache_dir / "out", args.num_proc, masks_dir),
        )
        whole, inside = num_dishes / stats.wall_s, num_dishes / stats.convert_s
        print(f"  converter, {label:<20} {whole:6.1f} dishes/s = {whole / limit:.2f} of the limit (whole run, "
              f"{stats.wall_s:.1f} s); {inside:.1f} dishes/s = {inside / limit:.2f} inside convert_nutrition5k")  # fmt: skip

    print(
        "\npeak memory of the converter (depth fallback masks), largest of all processes / sum over the tree:"
    )
    peaks = {}
    for size in sizes:
        stats = run_converter(roots[size], cache_dir / "out", args.num_proc, None)
        peaks[size] = stats
        print(f"  {size:>5} dishes: largest process {stats.max_process_rss_mib:6.0f} MiB; tree {stats.max_tree_rss_mib:6.0f} "
              f"MiB resident, {stats.max_tree_anon_mib:6.0f} MiB anonymous ({size / stats.wall_s:.1f} dishes/s)")  # fmt: skip
    if len(sizes) > 1:
        first, last = peaks[sizes[0]], peaks[sizes[-1]]
        print(f"  ratio {sizes[-1]} / {sizes[0]} dishes (target <= 1.3): largest process "
              f"{last.max_process_rss_mib / first.max_process_rss_mib:.2f}, tree resident "
              f"{last.max_tree_rss_mib / first.max_tree_rss_mib:.2f}, tree anonymous "
              f"{last.max_tree_anon_mib / first.max_tree_anon_mib:.2f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
