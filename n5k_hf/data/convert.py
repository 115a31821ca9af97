"""Nutrition5k (real or synthetic layout) -> a Hugging Face ``DatasetDict`` on disk.

`convert_nutrition5k` writes ``OUT`` with

* the ``DatasetDict`` (``train``, ``validation``, ``test``; schema ``DATASET_FEATURES``) written by
  ``save_to_disk``: ``datasets.load_from_disk(OUT)`` and ``load_n5k_dataset(OUT)`` load it;
* ``OUT/volumes.csv``: ``dish_id,volume_ml`` of every converted dish;
* ``OUT/conversion_report.json``: what was converted, and every dish that was not, with its reason.

Splits: ``test`` = ``depth_test_ids.txt``; ``validation`` = a seeded ``val_fraction`` of
``depth_train_ids.txt`` chosen by whole plate groups (`split_train_validation`: the incremental
scans of one plate, grouped by `plate_groups`, never straddle train and validation); ``train`` = the
rest. The split of every dish depends only on the split files, the metadata and the seed, never on
which dishes fail to convert.

Per dish: the files are validated (reason codes `SKIP_REASONS`), the food mask is the external one
(``masks_dir/dish_<id>.png``) when it exists, else `depth_food_mask`; the table plane is
`fit_table_plane` on the ring around the mask; ``volume_ml`` is `integrate_volume_ml` with the named
integrator and ``K = nutrition5k_intrinsics()``. The ``image`` and ``depth`` columns hold the
original PNG bytes (the depth stays bit-exact 16-bit).

Skip reasons (a dish that fails a check is skipped and reported, never silently dropped).
``not_16bit`` and ``plane_fit_failed`` extend the issue's list: an 8-bit depth PNG decodes fine but
has lost the 1e-4 m units, and ``not_16bit`` says so more precisely than ``decode_error``.

======================= ==============================================================
``no_metadata``         no parsable row in ``dish_metadata_cafe{1,2}.csv`` (detail: the
                        parser's message when its row was rejected)
``missing_rgb``         ``rgb.png`` missing (also when the whole dish folder is missing)
``missing_depth``       ``depth_raw.png`` missing
``empty_file``          ``rgb.png``, ``depth_raw.png`` or the external mask is 0 bytes
``decode_error``        a PNG that cannot be decoded (truncated, corrupt)
``not_16bit``           ``depth_raw.png`` decodes but is not single-channel 16-bit (8-bit)
``bad_shape``           image not 640x480 (rgb or depth), or an external mask of another size
``no_valid_depth``      fewer than `MIN_VALID_DEPTH_SHARE` of the depth pixels hold a reading
``depth_scale_suspect`` median valid depth outside `DEPTH_MEDIAN_RANGE_M` (0.2-0.45 m; the
                        camera is 0.359 m above the table), e.g. values 10x too small
``empty_mask``          the food mask holds no pixel (external mask all 0, or nothing found
                        on the support by the depth fallback)
``plane_fit_failed``    too few valid table pixels around the food to fit the plane
======================= ==============================================================

The report records ``synthetic: true`` when the tree holds the synthetic generator's
`SYNTHETIC_MARKER` (``ground_truth/volumes.csv``), plus the integrator, K and the mask settings.

Output safety: the dataset is written into a fresh ``OUT.tmp-*`` folder next to ``OUT`` and renamed
to ``OUT`` only when complete, so a killed run never leaves a half dataset at ``OUT``; an existing
``OUT`` is refused unless ``overwrite=True``, and then replaced only after the new one is complete.
The ``datasets`` cache used while generating is a fresh ``OUT.cache-*`` folder (or one inside
``cache_dir``), removed afterwards, so a rerun never reuses stale rows. A killed process cannot
clean up: its ``OUT.tmp-*`` and ``OUT.cache-*`` folders stay behind (never loadable as ``OUT``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from n5k_hf.data.features import DATASET_FEATURES, SPLITS
from n5k_hf.data.loading import load_n5k_dataset
from n5k_hf.data.masks import (
    DepthMaskConfig,
    MaskFileError,
    depth_food_mask,
    label_items,
    load_external_mask,
)
from n5k_hf.data.nutrition5k import (
    DishMetadata,
    MetadataRowError,
    Nutrition5kLayout,
    split_train_validation,
)
from n5k_hf.geometry.depth import DepthDecodeError, decode_depth_png, depth_raw_to_m
from n5k_hf.geometry.intrinsics import NUTRITION5K_IMAGE_HW, nutrition5k_intrinsics
from n5k_hf.geometry.plane import fit_table_plane
from n5k_hf.geometry.volume import VOLUME_METHODS, integrate_volume_ml
from n5k_hf.hub.dataset_card import build_dataset_card, push_dataset_to_hub

SKIP_REASONS = (
    "no_metadata",
    "missing_rgb",
    "missing_depth",
    "empty_file",
    "decode_error",
    "not_16bit",
    "bad_shape",
    "no_valid_depth",
    "depth_scale_suspect",
    "empty_mask",
    "plane_fit_failed",
)

DEPTH_MEDIAN_RANGE_M = (0.2, 0.45)
"""Plausible median depth of an overhead Nutrition5k frame (the table is 0.359 m from the camera)."""

MIN_VALID_DEPTH_SHARE = 0.05
"""Fewest depth pixels (share of the frame) with a reading for a dish to be usable."""

SYNTHETIC_MARKER = Path("ground_truth") / "volumes.csv"
"""File that `n5k_hf.data.synthetic.make_synthetic_nutrition5k` writes and the real dataset lacks."""

SYNTHETIC_CAMERA = Path("ground_truth") / "camera.json"
"""The synthetic generator's camera (``K``, image size)."""

REPORT_NAME = "conversion_report.json"
VOLUMES_NAME = "volumes.csv"
WRITER_BATCH_SIZE = 50
"""Rows buffered before an Arrow write: bounds memory (a row holds about 1 MB of PNG bytes)."""

_STOP_NAME = "STOP"
_MASK_SOURCES = ("external", "depth")


@dataclass(frozen=True)
class SkippedDish:
    """A dish of a split file that is not in the dataset, and why (``reason`` in `SKIP_REASONS`)."""

    dish_id: str
    split: str
    reason: str
    path: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.dish_id} [{self.split}]: {self.reason}: {self.path}{detail}"


class BadDishError(ValueError):
    """Raised in strict mode for the first dish that cannot be converted."""

    def __init__(self, skipped: SkippedDish):
        self.skipped = skipped
        super().__init__(f"bad dish {skipped} (strict mode stops at the first bad dish)")


@dataclass
class ConversionReport:
    """Outcome of a conversion; ``to_json_dict()`` is what ``conversion_report.json`` holds."""

    n5k_root: str
    output_dir: str
    synthetic: bool
    integrator: str
    K: list[list[float]]
    val_fraction: float
    seed: int
    masks_dir: str | None
    mask_config: dict[str, float | int]
    split_ids: dict[str, int]
    """Dish ids assigned to each split (converted + skipped)."""
    converted: dict[str, int]
    """Rows written per split."""
    mask_sources: dict[str, int]
    skipped: list[SkippedDish] = field(default_factory=list)
    metadata_errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(item.reason for item in self.skipped).items()))

    @property
    def skipped_by_split(self) -> dict[str, int]:
        counts = Counter(item.split for item in self.skipped)
        return {split: counts.get(split, 0) for split in SPLITS}

    def to_json_dict(self) -> dict[str, Any]:
        report = {
            key: value for key, value in asdict(self).items() if key not in ("skipped", "metadata_errors")
        }
        report["counts"] = {
            split: {
                "ids": self.split_ids[split],
                "converted": self.converted[split],
                "skipped": self.skipped_by_split[split],
            }
            for split in SPLITS
        }
        report["skipped_by_reason"] = self.skipped_by_reason
        report["skipped"] = [asdict(item) for item in self.skipped]
        report["metadata_errors"] = self.metadata_errors
        return report

    def summary(self) -> str:
        """A few human-readable lines: rows per split, skipped dishes by reason, where things went."""
        lines = [f"converted {sum(self.converted.values())} dishes into {self.output_dir}"]
        for split in SPLITS:
            lines.append(
                f"  {split:<10} {self.converted[split]:>5} rows  ({self.skipped_by_split[split]} of "
                f"{self.split_ids[split]} ids skipped)"
            )
        sources = ", ".join(f"{name} {count}" for name, count in self.mask_sources.items())
        lines.append(f"  masks: {sources}; volumes: {self.integrator} integrator")
        if self.skipped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in self.skipped_by_reason.items())
            lines.append(f"  skipped {len(self.skipped)} dishes: {reasons} (details in {REPORT_NAME})")
        if self.synthetic:
            lines.append("  source: SYNTHETIC Nutrition5k (ray-cast dishes), not real photographs")
        lines.append(f"  took {self.elapsed_s:.1f} s")
        return "\n".join(lines)


@dataclass(frozen=True)
class _DishJob:
    """Everything a generator worker needs; picklable (sent to `num_proc` worker processes)."""

    root: str
    masks_dir: str | None
    K: tuple[tuple[float, ...], ...]
    integrator: str
    mask_config: DepthMaskConfig
    strict: bool
    records_dir: str
    split: str
    metadata: Mapping[str, DishMetadata]


class _DishSkipped(Exception):
    def __init__(self, reason: str, path: Path | str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.path = str(path)
        self.detail = detail


def is_synthetic_root(root: Path | str) -> bool:
    """True when ``root`` was written by the synthetic generator (it holds `SYNTHETIC_MARKER`)."""
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def _check_synthetic_camera(root: Path, K: np.ndarray) -> None:
    """A synthetic tree rendered with another camera would get wrong volumes: refuse it by name."""
    camera_path = root / SYNTHETIC_CAMERA
    if not camera_path.is_file():
        return
    camera = json.loads(camera_path.read_text(encoding="utf-8"))
    if not np.allclose(np.asarray(camera["K"], dtype=np.float64), K, rtol=1e-6, atol=1e-6):
        raise ValueError(
            f"{camera_path}: the synthetic dishes were rendered with K={camera['K']}, but the converter "
            f"uses the Nutrition5k camera K={K.tolist()}; regenerate them with the default camera"
        )


def _read_nonempty(path: Path, missing_reason: str) -> bytes:
    if not path.parent.is_dir():
        raise _DishSkipped(missing_reason, path.parent, "dish folder missing")
    if not path.is_file():
        raise _DishSkipped(missing_reason, path, "file missing")
    data = path.read_bytes()
    if not data:
        raise _DishSkipped("empty_file", path, "0 bytes")
    return data


def _rgb_size(path: Path, data: bytes) -> tuple[int, int]:
    """(H, W) of an RGB PNG whose chunks all check out (PIL ``verify``: CRCs, no truncation)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.verify()
    except Exception as error:  # PIL raises many types for corrupt files
        raise _DishSkipped("decode_error", path, f"{type(error).__name__}: {error}") from None
    return height, width


def _depth_m_checked(path: Path, data: bytes) -> np.ndarray:
    try:
        raw = decode_depth_png(data)
    except DepthDecodeError as error:
        raise _DishSkipped(error.reason, path, str(error).split(": ", 1)[-1]) from None
    if raw.shape != NUTRITION5K_IMAGE_HW:
        raise _DishSkipped("bad_shape", path, f"depth is {raw.shape[1]}x{raw.shape[0]}, expected 640x480")
    depth_m = depth_raw_to_m(raw)
    valid = np.isfinite(depth_m)
    share = float(valid.mean())
    if share < MIN_VALID_DEPTH_SHARE:
        raise _DishSkipped("no_valid_depth", path, f"{share:.1%} of pixels hold a reading")
    # Every 4th pixel of every 4th row: the median of 19,200 samples, 16x cheaper than all of them.
    sample_m = depth_m[::4, ::4]
    sample_m = sample_m[np.isfinite(sample_m)]
    median_m = float(np.median(sample_m if sample_m.size else depth_m[valid]))
    low, high = DEPTH_MEDIAN_RANGE_M
    if not low <= median_m <= high:
        raise _DishSkipped(
            "depth_scale_suspect", path, f"median depth {median_m:.4f} m outside {low}-{high} m"
        )
    return depth_m


def _encode_mask_png(labels: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", labels)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {labels.shape} uint8 mask PNG")
    return buffer.tobytes()


def _metadata_columns(dish: DishMetadata) -> dict[str, Any]:
    return {
        "total_mass": dish.total_mass,
        "total_calories": dish.total_calories,
        "total_fat": dish.total_fat,
        "total_carb": dish.total_carb,
        "total_protein": dish.total_protein,
        "ingredients": [asdict(ingredient) for ingredient in dish.ingredients],
        "cafe": dish.cafe,
    }


def _convert_dish(dish_id: str, job: _DishJob) -> dict[str, Any]:
    """One dataset row; raises `_DishSkipped` with the reason when the dish cannot be used."""
    layout = Nutrition5kLayout(job.root)
    rgb_path, depth_path = layout.rgb_path(dish_id), layout.depth_raw_path(dish_id)
    rgb_bytes = _read_nonempty(rgb_path, "missing_rgb")
    depth_bytes = _read_nonempty(depth_path, "missing_depth")
    rgb_hw = _rgb_size(rgb_path, rgb_bytes)
    if rgb_hw != NUTRITION5K_IMAGE_HW:
        raise _DishSkipped("bad_shape", rgb_path, f"rgb is {rgb_hw[1]}x{rgb_hw[0]}, expected 640x480")
    depth_m = _depth_m_checked(depth_path, depth_bytes)
    K = np.array(job.K, dtype=np.float64)

    mask_path = Path(job.masks_dir) / f"{dish_id}.png" if job.masks_dir else None
    if mask_path is not None and mask_path.is_file():
        try:
            labels = load_external_mask(mask_path, NUTRITION5K_IMAGE_HW)
        except MaskFileError as error:
            raise _DishSkipped(error.reason, mask_path, str(error)) from None
        mask_source = "external"
    else:
        try:
            food = depth_food_mask(depth_m, K, **job.mask_config.as_dict())
        except ValueError as error:
            raise _DishSkipped(
                "plane_fit_failed", depth_path, f"table plane for the depth mask: {error}"
            ) from None
        labels = label_items(food)
        mask_source = "depth"
    food = labels > 0
    if not food.any():
        raise _DishSkipped("empty_mask", mask_path if mask_source == "external" else depth_path, mask_source)
    try:
        plane = fit_table_plane(depth_m, K, food)
    except ValueError as error:
        raise _DishSkipped("plane_fit_failed", depth_path, str(error)) from None
    volume_ml = integrate_volume_ml(depth_m, food, K, job.integrator, plane=plane)
    return {
        "dish_id": dish_id,
        "image": {"bytes": rgb_bytes, "path": None},
        "depth": {"bytes": depth_bytes, "path": None},
        "mask": {"bytes": _encode_mask_png(labels), "path": None},
        "K": K.astype(np.float32),
        "volume_ml": volume_ml,
        "plane": plane.as_array().astype(np.float32),
        "mask_source": mask_source,
        **_metadata_columns(job.metadata[dish_id]),
    }


def _generate_rows(dish_ids: list[str], job: _DishJob) -> Iterator[dict[str, Any]]:
    """``Dataset.from_generator`` body: one row per usable dish, one JSON line per dish in ``records_dir``.

    The record files (one per worker process) carry the skipped dishes and the progress back to
    the parent process; in strict mode the first bad dish writes a STOP file that ends every worker.
    """
    records_dir = Path(job.records_dir)
    stop_path = records_dir / _STOP_NAME
    with open(records_dir / f"records-{job.split}-{os.getpid()}.jsonl", "a", encoding="utf-8") as records:
        for dish_id in dish_ids:
            if stop_path.exists():
                return
            try:
                row = _convert_dish(dish_id, job)
            except _DishSkipped as skipped:
                item = SkippedDish(dish_id, job.split, skipped.reason, skipped.path, skipped.detail)
                records.write(json.dumps({"status": "skipped", **asdict(item)}) + "\n")
                records.flush()
                if job.strict:
                    stop_path.touch()
                    return
                continue
            records.write(
                json.dumps(
                    {
                        "status": "converted",
                        "dish_id": dish_id,
                        "split": job.split,
                        "mask_source": row["mask_source"],
                    }
                )
                + "\n"
            )
            records.flush()
            yield row


def _read_records(records_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(records_dir.glob("records-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.endswith("}"):  # a line being written right now is incomplete
                records.append(json.loads(line))
    return records


class _Progress:
    """A tqdm bar over dishes, advanced by polling the workers' record files from a thread."""

    def __init__(self, records_dir: Path, split: str, total: int, enabled: bool):
        self.records_dir = records_dir
        self.split = split
        self.enabled = enabled
        self.total = total
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _count(self) -> int:
        return sum(
            path.read_bytes().count(b"\n") for path in self.records_dir.glob(f"records-{self.split}-*.jsonl")
        )

    def _run(self) -> None:
        with tqdm(total=self.total, desc=f"converting {self.split}", unit="dish") as bar:
            while not self._done.wait(0.25):
                bar.update(self._count() - bar.n)
            bar.update(self._count() - bar.n)

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def _no_metadata(
    dish_id: str, split: str, rejected_rows: Mapping[str, MetadataRowError], metadata_dir: Path
) -> SkippedDish:
    if dish_id in rejected_rows:
        error = rejected_rows[dish_id]
        return SkippedDish(dish_id, split, "no_metadata", f"{error.path}:{error.line_number}", error.message)
    return SkippedDish(
        dish_id, split, "no_metadata", str(metadata_dir), "no row in dish_metadata_cafe{1,2}.csv"
    )


def _split_assignment(
    layout: Nutrition5kLayout, val_fraction: float, seed: int
) -> tuple[dict[str, list[str]], dict[str, DishMetadata], list[SkippedDish], list[str]]:
    """Dish ids per split (with metadata), the metadata, the no_metadata dishes, the rejected rows."""
    train_ids = layout.split_ids("depth_train")
    test_ids = layout.split_ids("depth_test")
    overlap = sorted(set(train_ids) & set(test_ids))
    if overlap:
        raise ValueError(
            f"{len(overlap)} dish ids are in both {layout.split_path('depth_train')} and "
            f"{layout.split_path('depth_test')}, e.g. {overlap[:5]}"
        )
    parsed = layout.parse_all_metadata()
    rejected_rows = {error.dish_id: error for error in parsed.errors if error.dish_id}
    no_metadata = []
    kept: dict[str, list[str]] = {}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        kept[split] = [dish_id for dish_id in ids if dish_id in parsed.dishes]
        no_metadata.extend(
            _no_metadata(dish_id, split, rejected_rows, layout.metadata_dir)
            for dish_id in ids
            if dish_id not in parsed.dishes
        )
    train, validation = split_train_validation(kept["train"], parsed.dishes, val_fraction, seed)
    splits = {"train": train, "validation": validation, "test": kept["test"]}
    return splits, parsed.dishes, no_metadata, [str(error) for error in parsed.errors]


def _empty_dataset(split: str) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {name: [] for name in DATASET_FEATURES}, features=DATASET_FEATURES, split=datasets.NamedSplit(split)
    )


def _write_volumes_csv(path: Path, dataset_dict: datasets.DatasetDict) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dish_id", "volume_ml"])
        for split in SPLITS:
            columns = dataset_dict[split].select_columns(["dish_id", "volume_ml"]).to_dict()
            for dish_id, volume_ml in zip(columns["dish_id"], columns["volume_ml"]):
                writer.writerow([dish_id, f"{volume_ml:.3f}"])


def _replace_directory(staging: Path, output_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``output_dir``, replacing an old one only at the end."""
    if output_dir.exists():
        retired = output_dir.with_name(f"{output_dir.name}.old-{uuid.uuid4().hex[:8]}")
        output_dir.rename(retired)
        staging.rename(output_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output_dir)


def convert_nutrition5k(
    n5k_root: Path | str,
    output_dir: Path | str,
    *,
    masks_dir: Path | str | None = None,
    val_fraction: float = 0.1,
    seed: int = 42,
    num_proc: int = 1,
    integrator: str = "heightmap",
    strict: bool = False,
    mask_config: DepthMaskConfig = DepthMaskConfig(),  # noqa: B008 (frozen, immutable default)
    overwrite: bool = False,
    cache_dir: Path | str | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert a Nutrition5k tree into ``output_dir`` (see the module docstring for what is written).

    Args:
        n5k_root: Nutrition5k root (``imagery/``, ``dish_ids/``, ``metadata/``), real or synthetic.
        output_dir: folder to create; an existing one is replaced only with ``overwrite=True``.
        masks_dir: external masks ``dish_<id>.png``; dishes without one get the depth fallback mask.
        val_fraction: share of ``depth_train`` ids moved to ``validation`` (whole plate groups).
        seed: seed of the validation draw.
        num_proc: worker processes of ``Dataset.from_generator``.
        integrator: a key of ``VOLUME_METHODS`` (``heightmap``, ``column``, ``frustum``).
        strict: raise `BadDishError` for the first dish that cannot be converted (nothing is written).
        mask_config: parameters of the depth fallback mask.
        overwrite: replace an existing ``output_dir``.
        cache_dir: parent folder of the temporary ``datasets`` cache (default: ``output_dir``'s parent).
        progress: show a progress bar over dishes.

    Returns:
        The `ConversionReport` (also written to ``output_dir/conversion_report.json``).

    Raises:
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
        Nutrition5kLayoutError: missing root, split file or metadata file (names the path).
        SplitFileError, ValueError: malformed split file, bad arguments.
        BadDishError: ``strict`` and a dish cannot be converted.
    """
    started = time.perf_counter()
    layout = Nutrition5kLayout(n5k_root)
    output_dir = Path(output_dir).absolute()
    if integrator not in VOLUME_METHODS:
        raise ValueError(f"unknown integrator {integrator!r}; valid: {', '.join(sorted(VOLUME_METHODS))}")
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise NotADirectoryError(f"masks folder not found: {masks_dir}")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output folder {output_dir} already exists; pass --overwrite to replace it")
    splits, metadata, skipped, metadata_errors = _split_assignment(layout, val_fraction, seed)
    if strict and skipped:
        raise BadDishError(skipped[0])

    K = nutrition5k_intrinsics()
    _check_synthetic_camera(layout.root, K)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch_parent = Path(cache_dir) if cache_dir is not None else output_dir.parent
    scratch_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{output_dir.name}.tmp-", dir=output_dir.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f"{output_dir.name}.cache-", dir=scratch_parent))
    records_dir = scratch / "records"
    records_dir.mkdir()
    bars_were_enabled = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        parts: dict[str, datasets.Dataset] = {}
        for split in SPLITS:
            ids = splits[split]
            job = _DishJob(
                root=str(layout.root),
                masks_dir=None if masks_dir is None else str(masks_dir),
                K=tuple(tuple(float(value) for value in row) for row in K),
                integrator=integrator,
                mask_config=mask_config,
                strict=strict,
                records_dir=str(records_dir),
                split=split,
                metadata={dish_id: metadata[dish_id] for dish_id in ids},
            )
            parts[split] = _generate_split(split, ids, job, scratch, num_proc, progress)
            if strict and (records_dir / _STOP_NAME).exists():
                break
        records = _read_records(records_dir)
        skipped.extend(
            SkippedDish(**{key: record[key] for key in ("dish_id", "split", "reason", "path", "detail")})
            for record in records
            if record["status"] == "skipped"
        )
        skipped.sort(key=lambda item: (SPLITS.index(item.split), item.dish_id))
        if strict and skipped:
            raise BadDishError(skipped[0])
        dataset_dict = datasets.DatasetDict(parts)
        # `save_to_disk` writes no shard for an empty split (and `load_from_disk` then fails): force one.
        dataset_dict.save_to_disk(
            str(staging), num_shards={split: 1 for split in SPLITS if len(parts[split]) == 0}
        )
        report = ConversionReport(
            n5k_root=str(layout.root),
            output_dir=str(output_dir),
            synthetic=is_synthetic_root(layout.root),
            integrator=integrator,
            K=K.tolist(),
            val_fraction=val_fraction,
            seed=seed,
            masks_dir=None if masks_dir is None else str(masks_dir),
            mask_config=mask_config.as_dict(),
            split_ids={
                split: len(splits[split])
                + sum(item.split == split and item.reason == "no_metadata" for item in skipped)
                for split in SPLITS
            },
            converted={split: len(parts[split]) for split in SPLITS},
            mask_sources={
                source: sum(record.get("mask_source") == source for record in records)
                for source in _MASK_SOURCES
            },
            skipped=skipped,
            metadata_errors=metadata_errors,
        )
        _write_volumes_csv(staging / VOLUMES_NAME, dataset_dict)
        report.elapsed_s = time.perf_counter() - started
        (staging / REPORT_NAME).write_text(
            json.dumps(report.to_json_dict(), indent=2) + "\n", encoding="utf-8"
        )
        del dataset_dict, parts  # release the memory-mapped cache files before removing them
        _replace_directory(staging, output_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        if bars_were_enabled:
            datasets.enable_progress_bars()
    return report


def _generate_split(
    split: str, ids: list[str], job: _DishJob, scratch: Path, num_proc: int, progress: bool
) -> datasets.Dataset:
    """One split written through ``Dataset.from_generator`` into ``scratch`` (an empty split if no row)."""
    if not ids:
        return _empty_dataset(split)
    with _Progress(Path(job.records_dir), split, len(ids), progress):
        try:
            return datasets.Dataset.from_generator(
                _generate_rows,
                features=DATASET_FEATURES,
                gen_kwargs={"dish_ids": ids, "job": job},
                num_proc=min(num_proc, len(ids)) if num_proc > 1 else None,
                cache_dir=str(scratch / "cache"),
                split=datasets.NamedSplit(split),
                writer_batch_size=WRITER_BATCH_SIZE,
                # A fresh fingerprint: the cache is new anyway, and it spares hashing the job with dill.
                fingerprint=f"n5k-{split}-{uuid.uuid4().hex}",
            )
        except ValueError:
            converted = sum(
                record["status"] == "converted" and record["split"] == split
                for record in _read_records(Path(job.records_dir))
            )
            if converted == 0:  # `datasets` refuses a generator that yields nothing
                return _empty_dataset(split)
            raise


def push_converted_dataset(output_dir: Path | str, repo_id: str, *, private: bool = False) -> Any:
    """Push a converted folder to the Hub with its dataset card (``n5k_hf.hub.dataset_card``).

    The card gets the split sizes, the report's counts, the integrator, K and whether the data are
    synthetic from ``output_dir/conversion_report.json``. Returns the pushed card.
    """
    output_dir = Path(output_dir)
    report_path = output_dir / REPORT_NAME
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path} not found: {output_dir} is not a converted dataset folder")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    dataset_dict = load_n5k_dataset(str(output_dir))
    counts = {f"converted ({split})": report["counts"][split]["converted"] for split in SPLITS}
    counts.update({f"skipped: {reason}": count for reason, count in report["skipped_by_reason"].items()})
    counts.update({f"mask source: {source}": count for source, count in report["mask_sources"].items()})
    card = build_dataset_card(
        repo_id=repo_id,
        split_sizes={split: len(dataset_dict[split]) for split in dataset_dict},
        report_counts=counts,
        integrator=report["integrator"],
        K=np.asarray(report["K"]),
        synthetic_data=bool(report["synthetic"]),
    )
    return push_dataset_to_hub(dataset_dict, repo_id, private=private, card=card)
