"""Loading the converted dataset: a local ``save_to_disk`` folder or a Hub dataset id."""

from __future__ import annotations

from pathlib import Path

import datasets

from n5k_hf.data.features import REQUIRED_COLUMNS


class DatasetFormatError(ValueError):
    """The dataset lacks a split or a column the project needs; the message names it."""


def load_n5k_dataset(name_or_path: str, *, revision: str | None = None) -> datasets.DatasetDict:
    """``load_from_disk`` for a converted folder, ``load_dataset`` for a Hub id; columns checked.

    Raises :class:`DatasetFormatError` naming the split and the missing column(s).
    """
    path = Path(name_or_path)
    if path.exists():
        if not (path / "dataset_dict.json").is_file():
            raise DatasetFormatError(
                f"{path}: not a converted dataset folder (no dataset_dict.json); run scripts/convert_nutrition5k.py"
            )
        dataset = datasets.load_from_disk(str(path))
    else:
        dataset = datasets.load_dataset(name_or_path, revision=revision)
    if not isinstance(dataset, datasets.DatasetDict):
        raise DatasetFormatError(
            f"{name_or_path}: expected a DatasetDict with splits, got {type(dataset).__name__}"
        )
    for split, part in dataset.items():
        missing = [column for column in REQUIRED_COLUMNS if column not in part.column_names]
        if missing:
            raise DatasetFormatError(
                f"{name_or_path}: split '{split}' lacks required column(s) {', '.join(missing)}"
            )
    return dataset


def get_split(
    dataset: datasets.DatasetDict, split: str, *, source: str, max_samples: int | None = None
) -> datasets.Dataset:
    """One split, optionally truncated to its first ``max_samples`` rows; unknown split -> clear error."""
    if split not in dataset:
        raise DatasetFormatError(f"{source}: no split '{split}' (has {', '.join(dataset)})")
    part = dataset[split]
    if max_samples is not None:
        part = part.select(range(min(max_samples, len(part))))
    return part
