"""Write a ``DatasetDict`` folder row by row, in the layout ``save_to_disk`` writes and ``load_from_disk`` reads.

``Dataset.from_generator(...).save_to_disk(out)`` writes every row twice: once into the ``datasets``
cache, then again into ``out`` (reading the cache back through memory maps, so the resident set of
the process grows with the dataset). Here rows stream straight into the final Arrow shards instead;
memory holds at most one record batch of rows per writer. A batch is converted to Arrow in one
``pyarrow.RecordBatch.from_pylist`` call against the features' schema (C++), not row by row through
``Features.encode_example`` (a Python walk over every nested value: about as costly as the file
write itself for a Nutrition5k row with its ingredient list).

* `ShardWriter`: rows -> ``<prefix>-NNNNN.arrow.partial`` shards in a split folder. Several writers
  (one per worker process, each with its own prefix) can fill one split folder side by side.
* `finalize_split`: shards, in the order given, -> ``data-XXXXX-of-NNNNN.arrow``, ``state.json``
  and ``dataset_info.json``.

Layout of ``OUT`` (``datasets`` ``save_to_disk``)::

    OUT/dataset_dict.json                 {"splits": [...]}            (`write_dataset_dict_json`)
    OUT/<split>/data-00000-of-0000N.arrow Arrow IPC streams, schema with the features metadata
    OUT/<split>/dataset_info.json         DatasetInfo: features, split size in rows and bytes
    OUT/<split>/state.json                shard list, split name, fingerprint, no format

``tests/test_disk_writer.py`` checks that ``datasets.load_from_disk`` reads it back row for row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import generate_random_fingerprint

MAX_SHARD_BYTES = 500 * 2**20
"""A shard is closed once the rows written to it reach this size (``save_to_disk``'s default, 500 MB)."""

WRITER_BATCH_SIZE = 16
"""Rows per Arrow record batch: what memory holds before a write (a Nutrition5k row is about 0.6 MB)."""


@dataclass(frozen=True)
class Shard:
    """One finished shard file and what it holds."""

    path: Path
    num_examples: int
    num_bytes: int


def _row_nbytes(row: Mapping[str, Any]) -> int:
    """Rough size of an encoded row: the bytes of its binary (image) fields, plus a little per column."""
    size = 0
    for value in row.values():
        if isinstance(value, dict) and isinstance(value.get("bytes"), bytes | bytearray):
            size += len(value["bytes"])
        else:
            size += 64
    return size


class ShardWriter:
    """Stream rows into ``folder/<prefix>-NNNNN.arrow.partial`` shards, a new one every `MAX_SHARD_BYTES`.

    Rows hold plain Python values in the features' storage form (an ``Image`` column takes
    ``{"bytes": ..., "path": None}``), numpy arrays allowed. `close` returns the finished shards;
    `finalize_split` turns them into a loadable split. As a context manager, leaving the block by
    an exception closes the open file (the caller discards the folder).
    """

    def __init__(
        self,
        folder: Path | str,
        features: datasets.Features,
        *,
        prefix: str = "data",
        max_shard_bytes: int = MAX_SHARD_BYTES,
        writer_batch_size: int = WRITER_BATCH_SIZE,
    ):
        if max_shard_bytes <= 0 or writer_batch_size <= 0:
            raise ValueError(f"need positive sizes, got {max_shard_bytes=}, {writer_batch_size=}")
        self.folder = Path(folder)
        self.features = features
        self.prefix = prefix
        self.max_shard_bytes = max_shard_bytes
        self.writer_batch_size = writer_batch_size
        self._schema = features.arrow_schema
        self._shards: list[Shard] = []
        self._path: Path | None = None
        self._writer: ArrowWriter | None = None
        self._rows: list[dict[str, Any]] = []
        self._shard_bytes = 0
        self._closed = False

    def _flush_rows(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._path = self.folder / f"{self.prefix}-{len(self._shards):05d}.arrow.partial"
            self._writer = ArrowWriter(
                features=self.features, path=str(self._path), writer_batch_size=self.writer_batch_size
            )
        batch = pa.RecordBatch.from_pylist(self._rows, schema=self._schema)
        self._writer.write_table(pa.Table.from_batches([batch]))
        self._rows = []

    def _close_shard(self) -> None:
        self._flush_rows()
        self._shard_bytes = 0
        if self._writer is not None:
            num_examples, num_bytes = self._writer.finalize()
            self._writer.close()
            self._shards.append(Shard(self._path, num_examples, num_bytes))
            self._writer = None

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (a dict with every column of ``features``)."""
        if self._closed:
            raise RuntimeError(f"the writer of {self.folder}/{self.prefix}-* is closed")
        missing = [name for name in self.features if name not in row]
        if missing:
            raise KeyError(f"row for {self.folder} lacks column(s) {', '.join(missing)}")
        self._rows.append(
            {name: value.tolist() if isinstance(value, np.ndarray) else value for name, value in row.items()}
        )
        self._shard_bytes += _row_nbytes(row)
        if self._shard_bytes >= self.max_shard_bytes:
            self._close_shard()
        elif len(self._rows) >= self.writer_batch_size:
            self._flush_rows()

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def close(self) -> list[Shard]:
        """Write what is buffered and close the file; the shards in writing order (none without rows)."""
        if self._closed:
            raise RuntimeError(f"the writer of {self.folder}/{self.prefix}-* is already closed")
        self._close_shard()
        self._closed = True
        return list(self._shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None and not self._closed:
            self._rows = []
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._closed = True


def finalize_split(
    folder: Path | str, split: str, features: datasets.Features, shards: Sequence[Shard]
) -> datasets.SplitInfo:
    """Make ``folder`` a loadable split: ``shards`` renamed ``data-XXXXX-of-NNNNN.arrow`` in the order
    given (the split's row order), plus ``state.json`` and ``dataset_info.json``.

    Without shards (no rows) one empty shard holding only the schema is written, so the split loads.
    """
    folder = Path(folder)
    shards = list(shards)
    if not shards:
        empty = folder / "empty.arrow.partial"
        writer = ArrowWriter(features=features, path=str(empty))
        num_examples, num_bytes = writer.finalize()
        writer.close()
        shards = [Shard(empty, num_examples, num_bytes)]
    data_files = []
    for index, shard in enumerate(shards):
        name = f"data-{index:05d}-of-{len(shards):05d}.arrow"
        shard.path.rename(folder / name)
        data_files.append({"filename": name})
    num_examples = sum(shard.num_examples for shard in shards)
    num_bytes = sum(shard.num_bytes for shard in shards)
    split_info = datasets.SplitInfo(name=split, num_bytes=num_bytes, num_examples=num_examples)
    info = datasets.DatasetInfo(
        features=features, splits=datasets.SplitDict({split: split_info}), dataset_size=num_bytes
    )
    info.write_to_directory(str(folder), pretty_print=True)
    state = {
        "_data_files": data_files,
        "_fingerprint": generate_random_fingerprint(),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": split,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    return split_info


def write_dataset_dict_json(folder: Path | str, splits: Iterable[str]) -> None:
    """``folder/dataset_dict.json``: the split names ``load_from_disk`` expects as subfolders."""
    (Path(folder) / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}), encoding="utf-8")
