"""Benchmark the Nutrition5k converter: throughput against bare PNG decoding, and peak memory vs size.

Usage:
    python scripts/benchmark_convert.py [--sizes 200,2000] [--throughput-size N] [--num-proc 2]
        [--repeats 3] [--cache-dir DIR] [--seed 0]

For each size a synthetic Nutrition5k tree is generated once into ``--cache-dir`` (reused by later
runs). Then, on ``--throughput-size`` dishes (default: the largest size, so that the fixed cost of
starting Python and importing ``datasets`` weighs little):

* decode limit: every dish's ``rgb.png`` and ``depth_raw.png`` read and fully decoded (OpenCV) in a
  pool of ``--num-proc`` processes: the throughput of doing nothing but decoding, with the same number
  of processes as the converter, malloc tuned like the converter's workers (`reuse_freed_memory`).
  Dishes/s, and CPU milliseconds per dish.
* converter: ``scripts/convert_nutrition5k.py --num-proc N`` end to end (validation, masks, planes,
  volumes, Arrow shards, the final ``load_from_disk`` check), with external masks and with the depth
  fallback masks. Dishes/s and its ratio to the decode limit (issue target: >= 0.6): over the whole
  run (interpreter start-up and imports included), inside ``convert_nutrition5k``, and in CPU time
  per dish (all processes, minus the CPU time of starting the script with ``--help``), which a busy
  shared machine disturbs far less than wall time.

Decode and converter runs are interleaved ``--repeats`` times and the best of each is kept.

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

from n5k_hf.allocator import reuse_freed_memory  # noqa: E402
from n5k_hf.cli import exit_on_user_error  # noqa: E402
from n5k_hf.data.nutrition5k import Nutrition5kLayout  # noqa: E402
from n5k_hf.data.synthetic import make_synthetic_nutrition5k  # noqa: E402

CONVERT_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_nutrition5k.py"
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
    cpu_s: float
    """User + system CPU seconds of the run and all its worker processes (start-up included)."""


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


def _decode_dish(paths: tuple[str, str]) -> float:
    """Read and fully decode one dish's two PNGs; returns the CPU seconds it took."""
    started = time.process_time()
    for path in paths:
        if cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED) is None:
            raise ValueError(f"cannot decode {path}")
    return time.process_time() - started


def decode_limit(root: Path, num_proc: int) -> tuple[float, float, int]:
    """(dishes/s over the wall clock, CPU seconds per dish, number of dishes) of decoding only."""
    layout = Nutrition5kLayout(root)
    dish_ids = layout.split_ids("depth_train") + layout.split_ids("depth_test")
    paths = [(str(layout.rgb_path(d)), str(layout.depth_raw_path(d))) for d in dish_ids]
    # The converter's workers tune malloc the same way (n5k_hf.allocator): compare like with like.
    with Pool(num_proc, initializer=reuse_freed_memory) as pool:
        started = time.perf_counter()
        cpu_s = sum(pool.map(_decode_dish, paths, chunksize=8))
        elapsed_s = time.perf_counter() - started
    return len(paths) / elapsed_s, cpu_s / len(paths), len(paths)


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
        wall_s=wall_s,
        convert_s=report["elapsed_s"],
        max_process_rss_mib=rusage.ru_maxrss / 1024,
        max_tree_rss_mib=tree_peak_kib / 1024,
        max_tree_anon_mib=anon_peak_kib / 1024,
        cpu_s=rusage.ru_utime + rusage.ru_stime,
    )


def startup_cpu_s() -> float:
    """CPU seconds of starting the conversion script and importing everything (``--help``)."""
    process = subprocess.Popen([sys.executable, str(CONVERT_SCRIPT), "--help"], stdout=subprocess.DEVNULL)
    _, _, rusage = os.wait4(process.pid, 0)
    return rusage.ru_utime + rusage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,2000", help="comma-separated numbers of synthetic dishes")
    parser.add_argument(
        "--throughput-size", type=int, help="dishes of the throughput runs (default: the largest of --sizes)"
    )
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
    throughput_size = args.throughput_size or sizes[-1]
    if throughput_size < 10:
        raise ValueError(f"--throughput-size needs >= 10 dishes, got {throughput_size}")
    roots = {
        size: synthetic_tree(cache_dir, size, args.seed, args.num_proc) for size in {*sizes, throughput_size}
    }

    measured = roots[throughput_size]
    masks = {"external masks": measured / "ground_truth" / "masks", "depth fallback masks": None}
    decode_runs, converter_runs = [], {label: [] for label in masks}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):  # interleaved, so that every kind of run sees the same background load
        decode_runs.append(decode_limit(measured, args.num_proc))
        for label, masks_dir in masks.items():
            converter_runs[label].append(run_converter(measured, cache_dir / "out", args.num_proc, masks_dir))
    startup_s = min(startup_cpu_s() for _ in range(args.repeats))
    num_dishes = decode_runs[0][2]
    limit = max(rate for rate, _, _ in decode_runs)
    decode_cpu_s = min(cpu for _, cpu, _ in decode_runs)
    print(f"\nthroughput on {num_dishes} dishes, {args.num_proc} processes, best of {args.repeats} interleaved runs "
          f"(load average before: {load_before:.1f} on {os.cpu_count()} CPUs):")  # fmt: skip
    print(
        f"  decode limit (rgb + depth PNG, OpenCV): {limit:6.1f} dishes/s, {decode_cpu_s * 1e3:5.1f} ms CPU per dish"
    )
    print(f"  converter start-up (imports):           {startup_s:6.2f} s CPU")
    for label, runs in converter_runs.items():
        fastest = min(runs, key=lambda stats: stats.wall_s)
        whole, inside = num_dishes / fastest.wall_s, num_dishes / fastest.convert_s
        cpu_per_dish_s = (min(stats.cpu_s for stats in runs) - startup_s) / num_dishes
        print(f"  converter, {label:<20} {whole:6.1f} dishes/s = {whole / limit:.2f} of the limit (whole run, "
              f"{fastest.wall_s:.1f} s); inside convert_nutrition5k {inside:.1f} dishes/s = {inside / limit:.2f}; "
              f"{cpu_per_dish_s * 1e3:.1f} ms CPU per dish after start-up = {decode_cpu_s / cpu_per_dish_s:.2f} of the limit")  # fmt: skip

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
