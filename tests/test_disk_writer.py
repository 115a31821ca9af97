"""ShardWriter + finalize_split write what datasets.load_from_disk reads back, row for row, in order."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from n5k_hf.data.disk_writer import ShardWriter, finalize_split, write_dataset_dict_json
from n5k_hf.data.features import DATASET_FEATURES

FEATURES = datasets.Features(
    {
        "name": datasets.Value("string"),
        "blob": datasets.Image(),
        "K": datasets.Array2D(shape=(3, 3), dtype="float32"),
        "plane": datasets.Sequence(datasets.Value("float32"), length=4),
        "score": datasets.Value("float32"),
        "parts": datasets.List({"id": datasets.Value("string"), "grams": datasets.Value("float32")}),
    }
)


def _row(index: int, blob_bytes: int = 1000) -> dict:
    rng = np.random.default_rng(index)
    return {
        "name": f"row-{index}",
        "blob": {"bytes": rng.integers(0, 256, blob_bytes, dtype=np.uint8).tobytes(), "path": None},
        "K": (np.eye(3) * (index + 1)).astype(np.float32),
        "plane": np.array([0.0, 0.0, -1.0, index / 10], dtype=np.float32),
        "score": None if index % 3 == 0 else index * 0.5,
        "parts": [{"id": f"p{index}-{part}", "grams": float(part)} for part in range(index % 4)],
    }


def _write(
    folder: Path, rows: list[dict], split: str = "train", features=FEATURES, **kwargs
) -> datasets.SplitInfo:
    (folder / split).mkdir(parents=True)
    with ShardWriter(folder / split, features, **kwargs) as writer:
        writer.write_rows(rows)
        shards = writer.close()
    info = finalize_split(folder / split, split, features, shards)
    write_dataset_dict_json(folder, [split])
    return info


def test_rows_round_trip_through_load_from_disk(tmp_path: Path) -> None:
    rows = [_row(index) for index in range(70)]
    info = _write(tmp_path, rows, writer_batch_size=8)
    loaded = datasets.load_from_disk(str(tmp_path))["train"]
    assert info.num_examples == len(loaded) == 70
    assert loaded.split == "train" and loaded.features == FEATURES
    raw = loaded.cast_column("blob", datasets.Image(decode=False))
    for row, read in zip(rows, raw, strict=True):
        assert read["name"] == row["name"]
        assert read["blob"]["bytes"] == row["blob"]["bytes"]  # bit-exact
        np.testing.assert_array_equal(np.asarray(read["K"], dtype=np.float32), row["K"])
        np.testing.assert_array_equal(np.asarray(read["plane"], dtype=np.float32), row["plane"])
        assert read["score"] == (None if row["score"] is None else pytest.approx(row["score"]))
        assert read["parts"] == row["parts"]


def test_shards_roll_over_at_the_size_limit_and_keep_the_order(tmp_path: Path) -> None:
    rows = [_row(index, blob_bytes=10_000) for index in range(25)]
    _write(tmp_path, rows, max_shard_bytes=35_000, writer_batch_size=2)
    state = json.loads((tmp_path / "train" / "state.json").read_text())
    names = [entry["filename"] for entry in state["_data_files"]]
    # 4 rows (40,064 estimated bytes) fill a shard past 35,000: 25 rows -> 6 full shards and 1 row.
    assert names == [f"data-{index:05d}-of-00007.arrow" for index in range(7)]
    assert sorted(path.name for path in (tmp_path / "train").glob("*.arrow")) == names
    assert not list((tmp_path / "train").glob("*.partial"))
    loaded = datasets.load_from_disk(str(tmp_path))["train"]
    assert loaded["name"] == [row["name"] for row in rows]


def test_an_empty_split_loads_with_the_full_schema(tmp_path: Path) -> None:
    info = _write(tmp_path, [])
    loaded = datasets.load_from_disk(str(tmp_path))["train"]
    assert len(loaded) == 0 and info.num_examples == 0
    assert loaded.features == FEATURES


def test_dataset_info_records_the_split_size(tmp_path: Path) -> None:
    info = _write(tmp_path, [_row(index) for index in range(5)])
    recorded = datasets.DatasetInfo.from_directory(str(tmp_path / "train"))
    assert recorded.features == FEATURES
    assert recorded.splits["train"].num_examples == 5
    assert recorded.splits["train"].num_bytes == info.num_bytes > 5 * 1000


def test_a_row_missing_a_column_is_refused_by_name(tmp_path: Path) -> None:
    row = _row(1)
    del row["plane"]
    writer = ShardWriter(tmp_path, FEATURES)
    with pytest.raises(KeyError, match=r"lacks column\(s\) plane"):
        writer.write(row)


def test_an_error_inside_the_block_writes_no_state_files(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    writer = ShardWriter(tmp_path / "train", FEATURES, writer_batch_size=2)
    with pytest.raises(RuntimeError, match="boom"), writer:
        writer.write_rows([_row(index) for index in range(5)])
        raise RuntimeError("boom")
    assert not (tmp_path / "train" / "state.json").exists()
    assert not list((tmp_path / "train").glob("*.arrow"))  # only .partial shards, never a finished one
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(_row(6))


def test_the_project_schema_accepts_a_converter_row(tmp_path: Path) -> None:
    row = {
        "dish_id": "dish_1",
        "image": {"bytes": b"rgb", "path": None},
        "depth": {"bytes": b"depth", "path": None},
        "mask": {"bytes": b"mask", "path": None},
        "K": np.eye(3, dtype=np.float32),
        "volume_ml": 12.5,
        "plane": np.array([0, 0, -1, 0.359], dtype=np.float32),
        "mask_source": "external",
        "total_mass": 100.0,
        "total_calories": None,
        "total_fat": None,
        "total_carb": None,
        "total_protein": None,
        "ingredients": [
            {
                "id": "ingr_1",
                "name": "rice",
                "grams": 100.0,
                "calories": 1.0,
                "fat": 0.0,
                "carb": 0.0,
                "protein": 0.0,
            }
        ],
        "cafe": 2,
    }
    _write(tmp_path, [row], split="test", features=DATASET_FEATURES)
    loaded = datasets.load_from_disk(str(tmp_path))["test"]
    for column in ("image", "depth", "mask"):
        loaded = loaded.cast_column(column, datasets.Image(decode=False))
    read = loaded[0]
    assert read["total_calories"] is None and read["volume_ml"] == 12.5 and read["cafe"] == 2
    assert read["image"]["bytes"] == b"rgb" and read["ingredients"][0]["name"] == "rice"
