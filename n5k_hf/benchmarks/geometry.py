"""Time the numpy volume integrators on one 640x480 ray-cast dish, pinned to one CPU core.

Prints milliseconds per image (median wall and CPU time of ``--repeats``) for the plane fit and for each
method of `VOLUME_METHODS` with the plane given and end to end (plane fitted on the ring), the
heightmap/column and heightmap/frustum ratios, and each method's error against the analytic volume.

    python scripts/benchmark_geometry.py [--repeats 50] [--cpu 0]
"""

from __future__ import annotations

import os

# One thread: BLAS thread pools must be sized before numpy is imported.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from n5k_hf.data.scenes import Box, EllipsoidalCap, Plate, Scene, SphericalCap, raycast_depth_m  # noqa: E402
from n5k_hf.geometry.intrinsics import nutrition5k_intrinsics  # noqa: E402
from n5k_hf.geometry.plane import fit_table_plane  # noqa: E402
from n5k_hf.geometry.volume import VOLUME_METHODS, integrate_volume_ml  # noqa: E402


def benchmark_dish(invalid_fraction: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Scene]:
    """A plate with three foods (244 mL, 24k mask pixels) on a table tilted by 3 degrees."""
    plate = Plate(radius_m=0.12, height_m=0.012)
    top = plate.support_height_m
    foods = (
        SphericalCap(radius_m=0.05, height_m=0.03, center_x_m=0.045, center_y_m=0.03, base_height_m=top),
        Box(
            size_x_m=0.05,
            size_y_m=0.04,
            size_z_m=0.03,
            center_x_m=-0.055,
            center_y_m=0.03,
            yaw_deg=30,
            base_height_m=top,
        ),
        EllipsoidalCap(
            a_m=0.045, b_m=0.03, c_m=0.025, center_x_m=0.0, center_y_m=-0.06, yaw_deg=20, base_height_m=top
        ),
    )
    scene = Scene((plate, *foods), tilt_deg=3.0, tilt_axis_deg=30.0)
    depth_m, object_id = raycast_depth_m(scene, nutrition5k_intrinsics(), 480, 640)
    depth_m[np.random.default_rng(seed).random(depth_m.shape) < invalid_fraction] = np.nan
    return depth_m, np.isin(object_id, scene.food_object_ids()), scene


def time_ms(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median wall time, median CPU time of this process) of ``function`` in ms, after a warm-up call.

    On a shared machine the CPU time is the fairer number: it leaves out time spent waiting for the core.
    """
    function()
    wall, cpu = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        function()
        cpu.append((time.process_time() - cpu_start) * 1e3)
        wall.append((time.perf_counter() - wall_start) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument(
        "--cpu", type=int, default=None, help="core to pin to (default: the first allowed one)"
    )
    args = parser.parse_args(argv)
    cpu = min(os.sched_getaffinity(0)) if args.cpu is None else args.cpu
    os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)

    K = nutrition5k_intrinsics()
    depth_m, mask, scene = benchmark_dish()
    plane = fit_table_plane(depth_m, K, mask)
    true_ml = scene.food_volume_ml()
    print(
        f"640x480 dish, {int(mask.sum())} food pixels, 5% invalid, true volume {true_ml:.1f} mL, core {cpu}"
    )
    fit_wall, fit_cpu = time_ms(lambda: fit_table_plane(depth_m, K, mask), args.repeats)
    print(f"{'plane fit (ring + RANSAC)':26s} wall {fit_wall:6.2f} ms  cpu {fit_cpu:6.2f} ms")
    cpu_ms = {}
    for method in VOLUME_METHODS:
        volume_ml = integrate_volume_ml(depth_m, mask, K, method, plane=plane)
        wall, cpu_ms[method] = time_ms(
            lambda m=method: integrate_volume_ml(depth_m, mask, K, m, plane=plane), args.repeats
        )
        total_wall, total_cpu = time_ms(
            lambda m=method: integrate_volume_ml(depth_m, mask, K, m), args.repeats
        )
        print(
            f"{method + ' (plane given)':26s} wall {wall:6.2f} ms  cpu {cpu_ms[method]:6.2f} ms"
            f" | with plane fit: wall {total_wall:6.2f} ms  cpu {total_cpu:6.2f} ms"
            f" | {volume_ml:6.1f} mL ({volume_ml / true_ml - 1:+.2%})"
        )
    for other in ("column", "frustum"):
        print(f"heightmap / {other} (cpu): {cpu_ms['heightmap'] / cpu_ms[other]:.1f}x")


if __name__ == "__main__":
    main()
