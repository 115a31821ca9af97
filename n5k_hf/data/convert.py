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

Streaming (`n5k_hf.data.parallel_conversion`): each split's ids are cut into contiguous chunks;
a worker converts a chunk and streams its rows straight into its own Arrow shards of the split folder
(`n5k_hf.data.disk_writer`: the ``save_to_disk`` layout, no ``datasets`` cache, no second copy); the
shards, in chunk order, hold the rows in split-file order. Memory does not grow with the number of
dishes, and only a few numbers per dish travel back to this process.

The report records ``synthetic: true`` when the tree holds the synthetic generator's
`SYNTHETIC_MARKER` (``ground_truth/volumes.csv``), plus the integrator, K and the mask settings.

Output safety: the dataset is written into a fresh ``OUT.tmp-*`` folder next to ``OUT`` and renamed
to ``OUT`` only when complete, so a killed run never leaves a half dataset at ``OUT``; an existing
``OUT`` is refused unless ``overwrite=True``, and then replaced only after the new one is complete.
A killed process cannot clean up: its ``OUT.tmp-*`` folder stays behind (never loadable as ``OUT``).
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from n5k_hf.data.dish_conversion import (
    DEPTH_MEDIAN_RANGE_M,
    MIN_VALID_DEPTH_SHARE,
    SKIP_REASONS,
    DishConversionSettings,
)
from n5k_hf.data.disk_writer import finalize_split, write_dataset_dict_json
from n5k_hf.data.features import DATASET_FEATURES, SPLITS
from n5k_hf.data.loading import load_n5k_dataset
from n5k_hf.data.masks import DepthMaskConfig
from n5k_hf.data.nutrition5k import (
    DishMetadata,
    MetadataRowError,
    Nutrition5kLayout,
    split_train_validation,
)
from n5k_hf.data.parallel_conversion import plan_chunks, run_chunks
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
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        for split in SPLITS:
            (staging / split).mkdir()
        tasks = plan_chunks(splits, staging, num_proc)
        with tqdm(
            total=sum(len(task.dish_ids) for task in tasks),
            unit="dish",
            desc="converting",
            disable=not progress,
        ) as bar:
            results = run_chunks(
                tasks,
                settings,
                {
                    dish_id: _metadata_columns(metadata[dish_id])
                    for task in tasks
                    for dish_id in task.dish_ids
                },
                num_proc=num_proc,
                strict=strict,
                on_progress=bar.update,
            )
            bar.update(sum(len(r.converted) + len(r.skipped) for r in results) - bar.n)  # messages in flight
        skipped.extend(
            SkippedDish(dish_id, result.task.split, reason, path, detail)
            for result in results
            for dish_id, reason, path, detail in result.skipped
        )
        if strict and skipped:
            raise BadDishError(skipped[0])  # the first bad dish in split-file order among those met
        converted = {split: 0 for split in SPLITS}
        mask_sources = {source: 0 for source in _MASK_SOURCES}
        volumes_ml: list[tuple[str, float]] = []
        for split in SPLITS:
            chunks = [result for result in results if result.task.split == split]
            finalize_split(staging / split, split, DATASET_FEATURES, [s for r in chunks for s in r.shards])
            for result in chunks:
                converted[split] += len(result.converted)
                for dish_id, volume_ml, mask_source in result.converted:
                    volumes_ml.append((dish_id, volume_ml))
                    mask_sources[mask_source] += 1
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
            converted=converted,
            mask_sources=mask_sources,
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
