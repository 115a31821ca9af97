"""Throughput of the evaluation path against the bare model forward on the same batches (CPU, tiny model).

Example: ``python scripts/benchmark_evaluate.py --num-dishes 8 --batch-size 4 --image-size 518``

The evaluation path is ``n5k_hf.evaluation.evaluate_dataloader`` over a prepared dataloader: PNG
decoding and the image processor (``EvalTransform``), the forward, the bilinear upsampling to the
label size, the volume (table plane + integrator) and the depth metrics of every dish, the gather.
The bare forward is ``model(pixel_values=...)`` on the very same, already collated batches. The
target is eval / bare >= 0.85 images/s (wall clock, best of ``--repeats`` alternated runs); the
ratio of process CPU time is printed too, as wall time is noisy on a shared machine. ``--profile`` adds the time per image of each stage,
measured separately on the same dishes. Dishes are rendered in memory (``render_synthetic_dish``)
into a ``datasets.Dataset`` with the converted schema (PNG bytes, as a converted dataset holds them).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict

import cv2
import datasets
import numpy as np
import torch
from PIL import Image

from n5k_hf.cli import exit_on_user_error
from n5k_hf.data.features import DATASET_FEATURES
from n5k_hf.data.synthetic import SyntheticConfig, SyntheticDish, render_synthetic_dish
from n5k_hf.geometry.depth import encode_depth_png

TARGET_RATIO = 0.85


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_dataset_row(dish: SyntheticDish) -> dict:
    """One row of the converted schema (``DATASET_FEATURES``) from a rendered dish.

    ``volume_ml`` is the analytic food volume and ``plane`` the support plane it stands on;
    ``mask`` holds the dish's food labels (0 background, 1..n items).
    """
    ok, mask_png = cv2.imencode(".png", dish.food_label_mask)
    if not ok:
        raise RuntimeError(f"{dish.dish_id}: OpenCV failed to encode the mask PNG")
    metadata = dish.metadata
    return {
        "dish_id": dish.dish_id,
        "image": {"bytes": _png_bytes(dish.rgb), "path": None},
        "depth": {"bytes": encode_depth_png(dish.depth_raw), "path": None},
        "mask": {"bytes": mask_png.tobytes(), "path": None},
        "K": np.asarray(dish.K, dtype=np.float32),
        "volume_ml": dish.volume_ml,
        "plane": np.asarray(dish.support_plane, dtype=np.float32),
        "mask_source": "synthetic",
        "total_mass": metadata.total_mass,
        "total_calories": metadata.total_calories,
        "total_fat": metadata.total_fat,
        "total_carb": metadata.total_carb,
        "total_protein": metadata.total_protein,
        "ingredients": [asdict(ingredient) for ingredient in metadata.ingredients],
        "cafe": metadata.cafe,
    }


def synthetic_eval_dataset(
    num_dishes: int, seed: int = 0, *, height_px: int = 480, width_px: int = 640
) -> datasets.Dataset:
    """``num_dishes`` synthetic dishes of ``width_px`` x ``height_px`` as a converted-schema split.

    Dish ``k`` is drawn from ``SeedSequence(seed).spawn(num_dishes)[k]`` (same seed, same dishes).
    """
    config = SyntheticConfig(height_px=height_px, width_px=width_px)
    rows = [
        synthetic_dataset_row(
            render_synthetic_dish(
                np.random.default_rng(child), dish_id=f"dish_{seed:04d}{index:04d}", config=config
            )
        )
        for index, child in enumerate(np.random.SeedSequence(seed).spawn(num_dishes))
    ]
    columns = {name: [row[name] for row in rows] for name in DATASET_FEATURES}
    return datasets.Dataset.from_dict(columns, features=DATASET_FEATURES)


def _per_image_stage_ms(model, processor, split, batch_size: int, integrator: str) -> dict[str, float]:
    """Milliseconds per image of each stage of the evaluation path, timed one stage at a time."""
    import torch.nn.functional as F

    from n5k_hf.data.transforms import EvalTransform, TransformedDataset, collate_samples
    from n5k_hf.geometry.volume import integrate_volume_ml
    from n5k_hf.metrics.depth import depth_metrics

    dataset = TransformedDataset(split, EvalTransform(processor))
    totals = dict.fromkeys(("decode_and_transform", "forward", "upsample", "volume", "depth_metrics"), 0.0)
    for start in range(0, len(dataset), batch_size):
        clock = time.perf_counter()
        batch = collate_samples([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        totals["decode_and_transform"] += time.perf_counter() - clock
        with torch.no_grad():
            clock = time.perf_counter()
            predicted = model(pixel_values=batch["pixel_values"]).predicted_depth
            totals["forward"] += time.perf_counter() - clock
            clock = time.perf_counter()
            predicted = F.interpolate(
                predicted[:, None],
                size=tuple(batch["depth_m"].shape[-2:]),
                mode="bilinear",
                align_corners=False,
            )[:, 0]
            totals["upsample"] += time.perf_counter() - clock
        pred_np = predicted.numpy()
        for i in range(len(pred_np)):
            depth_m, valid, food = (batch[key][i].numpy() for key in ("depth_m", "valid_mask", "food_mask"))
            clock = time.perf_counter()
            integrate_volume_ml(pred_np[i], food, batch["K"][i].numpy().astype(np.float64), method=integrator)
            totals["volume"] += time.perf_counter() - clock
            clock = time.perf_counter()
            for region in (food & valid, valid):
                depth_metrics(np.maximum(pred_np[i], 1e-6), depth_m, region)
            totals["depth_metrics"] += time.perf_counter() - clock
    return {name: 1000.0 * seconds / len(dataset) for name, seconds in totals.items()}


def run_benchmark(
    *,
    num_dishes: int,
    batch_size: int,
    image_size: int,
    height_px: int,
    width_px: int,
    repeats: int,
    num_workers: int,
    integrator: str,
    profile: bool,
    seed: int = 0,
) -> dict:
    """Best-of-``repeats`` images/s of the bare forward and of the evaluation path (alternated)."""
    from accelerate import Accelerator

    from n5k_hf.evaluation import eval_dataloader, evaluate_dataloader
    from n5k_hf.modeling import build_image_processor, load_depth_model

    if num_dishes < 1 or batch_size < 1 or repeats < 1:
        raise ValueError(
            f"need num_dishes, batch_size and repeats >= 1, got {num_dishes}, {batch_size}, {repeats}"
        )
    split = synthetic_eval_dataset(num_dishes, seed, height_px=height_px, width_px=width_px)
    model = load_depth_model(model_config="tiny").eval()
    processor = build_image_processor(size=image_size)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    loader = accelerator.prepare(
        eval_dataloader(split, processor, batch_size=batch_size, num_workers=num_workers)
    )
    model = accelerator.prepare_model(model, evaluation_mode=True)
    pixel_batches = [batch["pixel_values"] for batch in loader]

    def bare_forward() -> None:
        with torch.no_grad():
            for pixel_values in pixel_batches:
                model(pixel_values=pixel_values)

    def evaluation() -> None:
        evaluate_dataloader(model, loader, accelerator, integrator=integrator)

    bare_forward()  # warm-up (allocator, oneDNN kernels)
    seconds: dict[str, list[float]] = {"bare_forward": [], "evaluation": []}
    cpu_seconds: dict[str, list[float]] = {"bare_forward": [], "evaluation": []}
    for _ in range(repeats):
        for name, run in (("bare_forward", bare_forward), ("evaluation", evaluation)):
            clock, cpu_clock = time.perf_counter(), time.process_time()
            run()
            seconds[name].append(time.perf_counter() - clock)
            cpu_seconds[name].append(time.process_time() - cpu_clock)
    images_per_s = {name: num_dishes / min(times) for name, times in seconds.items()}
    images_per_cpu_s = {name: num_dishes / min(times) for name, times in cpu_seconds.items()}
    result = {
        "num_dishes": num_dishes,
        "batch_size": batch_size,
        "input_hw": list(pixel_batches[0].shape[-2:]),
        "label_hw": [height_px, width_px],
        "torch_threads": torch.get_num_threads(),
        "bare_forward_images_per_s": images_per_s["bare_forward"],
        "evaluation_images_per_s": images_per_s["evaluation"],
        "ratio": images_per_s["evaluation"] / images_per_s["bare_forward"],
        "target_ratio": TARGET_RATIO,
        # CPU time of this process (all its threads; dataloader workers not counted): on a shared
        # machine it is steadier than wall time; with --threads 1 --num-workers 0 it is the compute cost.
        "cpu_ratio": images_per_cpu_s["evaluation"] / images_per_cpu_s["bare_forward"],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }
    if profile:
        result["stage_ms_per_image"] = _per_image_stage_ms(
            accelerator.unwrap_model(model), processor, split, batch_size, integrator
        )
    accelerator.end_training()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-dishes", type=int, default=8, help="synthetic dishes (default: 8)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (default: 4)")
    parser.add_argument(
        "--image-size", type=int, default=518, help="processor short side, multiple of 14 (default: 518)"
    )
    parser.add_argument("--height", type=int, default=480, help="stored image height (default: 480)")
    parser.add_argument("--width", type=int, default=640, help="stored image width (default: 640)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternated timed runs of each path; best kept (default: 3)"
    )
    parser.add_argument(
        "--num-workers", type=int, default=0, help="dataloader workers of the evaluation path"
    )
    parser.add_argument("--integrator", default="heightmap", help="volume integrator (default: heightmap)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="also time each stage per image")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run_benchmark(
        num_dishes=args.num_dishes,
        batch_size=args.batch_size,
        image_size=args.image_size,
        height_px=args.height,
        width_px=args.width,
        repeats=args.repeats,
        num_workers=args.num_workers,
        integrator=args.integrator,
        profile=args.profile,
    )
    if args.json:
        print(json.dumps(result))
        return
    height, width = result["input_hw"]
    print(
        f"tiny DAV2-metric, {result['num_dishes']} dishes {args.width}x{args.height} -> model input "
        f"{width}x{height}, batch {result['batch_size']}, {result['torch_threads']} torch threads"
    )
    print(f"bare forward     {result['bare_forward_images_per_s']:8.2f} images/s")
    print(f"evaluation path  {result['evaluation_images_per_s']:8.2f} images/s")
    verdict = "meets" if result["ratio"] >= TARGET_RATIO else "BELOW"
    print(f"ratio            {result['ratio']:8.3f} ({verdict} the target {TARGET_RATIO})")
    print(f"CPU-time ratio   {result['cpu_ratio']:8.3f} (process CPU seconds; see --help)")
    for stage, milliseconds in result.get("stage_ms_per_image", {}).items():
        print(f"  {stage:22s} {milliseconds:8.1f} ms/image")


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
