"""Nutrition5k (real or synthetic layout) -> a Hugging Face ``DatasetDict`` on disk.

`convert_nutrition5k` writes ``OUT`` with

* the ``DatasetDict`` (``train``, ``validation``, ``test``; schema ``DATASET_FEATURES``) in the
  ``save_to_disk`` layout: ``datasets.load_from_disk(OUT)`` and ``load_n5k_dataset(OUT)`` load it;
* ``OUT/volumes.csv``: ``dish_id,volume_ml`` of every converted dish;
* ``OUT/conversion_report.json``: what was converted, and every dish that was not, with its reason.

Splits: ``test`` = ``depth_test_ids.txt``; ``validation`` = a seeded ``val_fraction`` of
``depth_train_ids.txt`` chosen by whole plate groups (`split_train_validation`: the incremental
scans of one plate, grouped by `plate_groups`, never straddle train and validation); ``train`` = the
rest. The split of every dish depends only on the split files, the metadata and the seed, never on
which dishes fail to convert. Rows keep the order of the split files.

Per dish (`n5k_hf.data.dish_conversion.convert_dish`, in ``num_proc`` worker processes): the files
are validated (reason codes `SKIP_REASONS`), the food mask is the external one
(``masks_dir/dish_<id>.png``) when it exists, else `depth_food_mask`; the table plane is
`fit_table_plane` on the ring around the mask; ``volume_ml`` is `integrate_volume_ml` with the named
integrator and ``K = nutrition5k_intrinsics()``. The ``image`` and ``depth`` columns hold the
original PNG bytes (the depth stays bit-exact 16-bit).

Streaming: the workers' results come back in split-file order through a bounded window of dishes in
flight, and `SplitWriter` appends each row to the final Arrow shards in ``OUT`` (no ``datasets``
cache, no second copy by ``save_to_disk``), so memory does not grow with the number of dishes.

The report records ``synthetic: true`` when the tree holds the synthetic generator's
`SYNTHETIC_MARKER` (``ground_truth/volumes.csv``), plus the integrator, K and the mask settings.

Output safety: the dataset is written into a fresh ``OUT.tmp-*`` folder next to ``OUT`` and renamed
to ``OUT`` only when complete, so a killed run never leaves a half dataset at ``OUT``; an existing
``OUT`` is refused unless ``overwrite=True``, and then replaced only after the new one is complete.
A killed process cannot clean up: its ``OUT.tmp-*`` folder stays behind (never loadable as ``OUT``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from n5k_hf.allocator import reuse_freed_memory
from n5k_hf.data import dish_conversion
from n5k_hf.data.dish_conversion import (
    DEPTH_MEDIAN_RANGE_M,
    MIN_VALID_DEPTH_SHARE,
    SKIP_REASONS,
    DishConversionSettings,
    DishSkipped,
)
from n5k_hf.data.disk_writer import SplitWriter, write_dataset_dict_json
from n5k_hf.data.features import DATASET_FEATURES, SPLITS
from n5k_hf.data.loading import load_n5k_dataset
from n5k_hf.data.masks import DepthMaskConfig
from n5k_hf.data.nutrition5k import (
    DishMetadata,
    MetadataRowError,
    Nutrition5kLayout,
    split_train_validation,
)
from n5k_hf.geometry.intrinsics import nutrition5k_intrinsics
from n5k_hf.geometry.volume import VOLUME_METHODS
from n5k_hf.hub.dataset_card import build_dataset_card, push_dataset_to_hub

__all__ = [
    "DEPTH_MEDIAN_RANGE_M",
    "MIN_VALID_DEPTH_SHARE",
    "REPORT_NAME",
    "SKIP_REASONS",
    "VOLUMES_NAME",
    "BadDishError",
    "ConversionReport",
    "SkippedDish",
    "convert_nutrition5k",
    "is_synthetic_root",
    "push_converted_dataset",
]

SYNTHETIC_MARKER = Path("ground_truth") / "volumes.csv"
"""File that `n5k_hf.data.synthetic.make_synthetic_nutrition5k` writes and the real dataset lacks."""

SYNTHETIC_CAMERA = Path("ground_truth") / "camera.json"
"""The synthetic generator's camera (``K``, image size)."""

REPORT_NAME = "conversion_report.json"
VOLUMES_NAME = "volumes.csv"
DISHES_IN_FLIGHT_PER_PROCESS = 4
"""Dishes submitted ahead per worker: keeps workers busy while bounding the results held in memory."""

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


def _metadata_columns(dish: DishMetadata) -> dict[str, Any]:
    return {
        "total_mass": dish.total_mass,
        "total_calories": dish.total_calories,
        "total_fat": dish.total_fat,
        "total_carb": dish.total_carb,
        "total_protein": dish.total_protein,
        "ingredients": [vars(ingredient).copy() for ingredient in dish.ingredients],
        "cafe": dish.cafe,
    }


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


def _replace_directory(staging: Path, output_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``output_dir``, replacing an old one only at the end."""
    if output_dir.exists():
        retired = output_dir.with_name(f"{output_dir.name}.old-{uuid.uuid4().hex[:8]}")
        output_dir.rename(retired)
        staging.rename(output_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output_dir)


_worker_settings: DishConversionSettings | None = None
"""The conversion's settings inside a worker process (set once by `_init_worker`)."""

_Outcome = tuple[dict[str, Any] | None, tuple[str, str, str] | None]
"""(computed columns, None) for a converted dish, (None, (reason, path, detail)) for a skipped one."""


def _init_worker(settings: DishConversionSettings) -> None:
    global _worker_settings
    _worker_settings = settings
    reuse_freed_memory()  # a worker process is ours: no page faults for each dish's temporaries


def _convert_one(dish_id: str, settings: DishConversionSettings) -> _Outcome:
    try:
        return dish_conversion.convert_dish(dish_id, settings), None
    except DishSkipped as skipped:
        return None, (skipped.reason, skipped.path, skipped.detail)


@dataclass(frozen=True)
class _FileStamp:
    """A source PNG a worker validated, sent back instead of its bytes: the parent reads the file
    itself (from the page cache, far cheaper than piping 0.6 MB per dish) and checks it is unchanged."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path, data: bytes) -> _FileStamp:
        return cls(str(path), len(data), path.stat().st_mtime_ns)

    def read(self) -> bytes:
        with open(self.path, "rb") as handle:
            status = os.fstat(handle.fileno())
            data = handle.read()
        if (len(data), status.st_mtime_ns) != (self.size, self.mtime_ns):
            raise RuntimeError(f"{self.path} changed while the conversion was reading it; convert again")
        return data


_PNG_COLUMNS = {"image": Nutrition5kLayout.rgb_path, "depth": Nutrition5kLayout.depth_raw_path}
"""Columns holding a source PNG's bytes, and where the file lies."""


def _convert_in_worker(dish_id: str) -> _Outcome:
    assert _worker_settings is not None, "worker started without _init_worker"
    columns, skip = _convert_one(dish_id, _worker_settings)
    if columns is not None:
        layout = Nutrition5kLayout(_worker_settings.root)
        for name, path_of in _PNG_COLUMNS.items():
            columns[name] = _FileStamp.of(path_of(layout, dish_id), columns[name]["bytes"])
    return columns, skip


def _with_png_bytes(columns: dict[str, Any]) -> dict[str, Any]:
    """Columns from a worker with each `_FileStamp` replaced by the file's bytes."""
    for name in _PNG_COLUMNS:
        if isinstance(columns[name], _FileStamp):
            columns[name] = {"bytes": columns[name].read(), "path": None}
    return columns


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux (workers start at once, nothing re-imported); ``spawn`` elsewhere (macOS, Windows)."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _converted_in_order(
    jobs: list[tuple[str, str]], settings: DishConversionSettings, num_proc: int
) -> Iterator[tuple[str, str, _Outcome]]:
    """``(split, dish_id, outcome)`` for every job, in the order of ``jobs``.

    With ``num_proc > 1`` the dishes are converted by a pool of worker processes; at most
    `DISHES_IN_FLIGHT_PER_PROCESS` per process are submitted ahead of the one being yielded, so the
    results waiting in memory stay bounded however many dishes there are. An unexpected error in a
    worker is raised here with a note naming the dish.
    """
    if num_proc == 1:
        for split, dish_id in jobs:
            try:
                yield split, dish_id, _convert_one(dish_id, settings)
            except Exception as error:
                error.add_note(f"while converting {dish_id} ({split})")
                raise
        return
    pool = ProcessPoolExecutor(
        max_workers=num_proc, mp_context=_pool_context(), initializer=_init_worker, initargs=(settings,)
    )
    try:
        remaining = iter(jobs)
        pending: deque[tuple[str, str, Future[_Outcome]]] = deque()

        def submit_next() -> None:
            job = next(remaining, None)
            if job is not None:
                pending.append((*job, pool.submit(_convert_in_worker, job[1])))

        for _ in range(num_proc * DISHES_IN_FLIGHT_PER_PROCESS):
            submit_next()
        while pending:
            split, dish_id, future = pending.popleft()
            try:
                outcome = future.result()
            except Exception as error:
                error.add_note(f"while converting {dish_id} ({split}) in a worker process")
                raise
            submit_next()
            yield split, dish_id, outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_volumes_csv(path: Path, volumes_ml: list[tuple[str, float]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dish_id", "volume_ml"])
        for dish_id, volume_ml in volumes_ml:
            writer.writerow([dish_id, f"{volume_ml:.3f}"])


def _check_written(folder: Path, converted: Mapping[str, int]) -> None:
    """Load the finished folder with ``datasets`` (memory maps only) and compare the row counts."""
    loaded = datasets.load_from_disk(str(folder))
    rows = {split: len(loaded[split]) for split in loaded}
    if rows != dict(converted) or loaded[SPLITS[0]].features != DATASET_FEATURES:
        raise RuntimeError(
            f"{folder}: wrote {dict(converted)} rows per split, but datasets reads back {rows}"
        )


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
    progress: bool = True,
) -> ConversionReport:
    """Convert a Nutrition5k tree into ``output_dir`` (see the module docstring for what is written).

    Args:
        n5k_root: Nutrition5k root (``imagery/``, ``dish_ids/``, ``metadata/``), real or synthetic.
        output_dir: folder to create; an existing one is replaced only with ``overwrite=True``.
        masks_dir: external masks ``dish_<id>.png``; dishes without one get the depth fallback mask.
        val_fraction: share of ``depth_train`` ids moved to ``validation`` (whole plate groups).
        seed: seed of the validation draw.
        num_proc: worker processes converting dishes (1: in this process).
        integrator: a key of ``VOLUME_METHODS`` (``heightmap``, ``column``, ``frustum``).
        strict: raise `BadDishError` for the first dish that cannot be converted (nothing is written).
        mask_config: parameters of the depth fallback mask.
        overwrite: replace an existing ``output_dir``.
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
    settings = DishConversionSettings(
        root=str(layout.root),
        masks_dir=None if masks_dir is None else str(masks_dir),
        K=tuple(tuple(float(value) for value in row) for row in K),
        integrator=integrator,
        mask_config=mask_config,
    )
    jobs = [(split, dish_id) for split in SPLITS for dish_id in splits[split]]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{output_dir.name}.tmp-", dir=output_dir.parent))
    converted: Counter[str] = Counter({split: 0 for split in SPLITS})
    mask_sources: Counter[str] = Counter({source: 0 for source in _MASK_SOURCES})
    volumes_ml: list[tuple[str, float]] = []
    K_float32 = K.astype(np.float32)
    try:
        with contextlib.ExitStack() as stack:
            writers = {
                split: stack.enter_context(SplitWriter(staging / split, split, DATASET_FEATURES))
                for split in SPLITS
            }
            bar = stack.enter_context(tqdm(total=len(jobs), unit="dish", disable=not progress))
            for split, dish_id, (columns, skip) in _converted_in_order(jobs, settings, num_proc):
                bar.set_description(f"converting {split}", refresh=False)
                bar.update()
                if skip is not None:
                    item = SkippedDish(dish_id, split, *skip)
                    if strict:
                        raise BadDishError(item)
                    skipped.append(item)
                    continue
                volume_ml = float(np.float32(columns["volume_ml"]))  # the value the float32 column holds
                writers[split].write(
                    {
                        "dish_id": dish_id,
                        **_with_png_bytes(columns),
                        "K": K_float32,
                        "volume_ml": volume_ml,
                        "plane": np.asarray(columns["plane"], dtype=np.float32),
                        **_metadata_columns(metadata[dish_id]),
                    }
                )
                converted[split] += 1
                mask_sources[columns["mask_source"]] += 1
                volumes_ml.append((dish_id, volume_ml))
            for writer in writers.values():
                writer.close()
        write_dataset_dict_json(staging, SPLITS)
        _check_written(staging, converted)
        skipped.sort(key=lambda item: (SPLITS.index(item.split), item.dish_id))
        report = ConversionReport(
            n5k_root=str(layout.root),
            output_dir=str(output_dir),
            synthetic=is_synthetic_root(layout.root),
            integrator=integrator,
            K=K.tolist(),
            val_fraction=val_fraction,
            seed=seed,
            masks_dir=settings.masks_dir,
            mask_config=mask_config.as_dict(),
            split_ids={
                split: len(splits[split])
                + sum(item.split == split and item.reason == "no_metadata" for item in skipped)
                for split in SPLITS
            },
            converted=dict(converted),
            mask_sources=dict(mask_sources),
            skipped=skipped,
            metadata_errors=metadata_errors,
        )
        _write_volumes_csv(staging / VOLUMES_NAME, volumes_ml)
        report.elapsed_s = time.perf_counter() - started
        (staging / REPORT_NAME).write_text(
            json.dumps(report.to_json_dict(), indent=2) + "\n", encoding="utf-8"
        )
        _replace_directory(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


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
