"""Nutrition5k -> DatasetDict conversion on a synthetic tree with planted bad dishes."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
from pathlib import Path

import cv2
import datasets
import numpy as np
import pytest

import n5k_hf.data.convert as convert_module
from n5k_hf.cli import exit_on_user_error
from n5k_hf.data import dish_conversion, parallel_conversion
from n5k_hf.data.convert import (
    REPORT_NAME,
    VOLUMES_NAME,
    BadDishError,
    convert_nutrition5k,
    push_converted_dataset,
)
from n5k_hf.data.features import DATASET_FEATURES, SPLITS
from n5k_hf.data.loading import load_n5k_dataset
from n5k_hf.data.nutrition5k import Nutrition5kLayout, plate_groups
from n5k_hf.data.synthetic import make_synthetic_nutrition5k
from n5k_hf.geometry.depth import decode_depth_png
from n5k_hf.geometry.intrinsics import nutrition5k_intrinsics

NUM_DISHES = 20
EXTRA_DISH_ID = "dish_1999999999"  # listed in depth_test_ids.txt, with metadata, but no folder
SCRIPT = Path(__file__).parents[1] / "scripts" / "convert_nutrition5k.py"


def _plant_bad_dishes(root: Path) -> dict[str, str]:
    """Break some dishes of a synthetic tree; returns {dish_id: expected reason}."""
    layout = Nutrition5kLayout(root)
    train_ids, test_ids = layout.split_ids("depth_train"), layout.split_ids("depth_test")
    victims = iter([*train_ids[1:12:2], *test_ids[:2]])  # 6 train and 2 test dishes
    expected: dict[str, str] = {}

    def plant(reason: str) -> str:
        dish_id = next(victims)
        expected[dish_id] = reason
        return dish_id

    layout.depth_raw_path(plant("empty_file")).write_bytes(b"")
    truncated = layout.depth_raw_path(plant("decode_error"))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    eight_bit = layout.depth_raw_path(plant("not_16bit"))
    cv2.imwrite(str(eight_bit), (decode_depth_png(eight_bit) // 16).astype(np.uint8))
    wide = layout.rgb_path(plant("bad_shape"))
    cv2.imwrite(str(wide), cv2.resize(cv2.imread(str(wide)), (640, 360)))
    small = layout.depth_raw_path(plant("depth_scale_suspect"))
    cv2.imwrite(str(small), decode_depth_png(small) // 10)
    cv2.imwrite(str(layout.depth_raw_path(plant("no_valid_depth"))), np.zeros((480, 640), np.uint16))
    layout.rgb_path(plant("missing_rgb")).unlink()

    metadata_path = layout.dish_metadata_path(1)
    rows = metadata_path.read_text(encoding="utf-8").splitlines()
    malformed = plant("no_metadata")
    rows = [row + ",extra" if row.startswith(malformed + ",") else row for row in rows]
    rows.append(EXTRA_DISH_ID + rows[0][rows[0].index(",") :])
    metadata_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with open(layout.split_path("depth_test"), "a", encoding="utf-8") as handle:
        handle.write(EXTRA_DISH_ID + "\n")
    expected[EXTRA_DISH_ID] = "missing_rgb"
    return expected


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("n5k")
    make_synthetic_nutrition5k(root, NUM_DISHES, seed=11)
    return root, _plant_bad_dishes(root)


@pytest.fixture(scope="module")
def external(tree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted with the ground-truth masks as external masks, one process."""
    root, _ = tree
    output_dir = tmp_path_factory.mktemp("external") / "out"
    convert_nutrition5k(
        root, output_dir, masks_dir=root / "ground_truth" / "masks", val_fraction=0.25, progress=False
    )
    return output_dir


@pytest.fixture(scope="module")
def fallback(tree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted with the depth fallback masks, two processes."""
    root, _ = tree
    output_dir = tmp_path_factory.mktemp("fallback") / "out"
    convert_nutrition5k(root, output_dir, val_fraction=0.25, num_proc=2, progress=False)
    return output_dir


def _truth(root: Path) -> dict[str, dict[str, str]]:
    with open(root / "ground_truth" / "volumes.csv", encoding="utf-8") as handle:
        return {row["dish_id"]: row for row in csv.DictReader(handle)}


def _rows(output_dir: Path, *columns: str) -> dict[str, dict]:
    dataset = datasets.load_from_disk(str(output_dir))
    rows = {}
    for split in SPLITS:
        part = dataset[split].select_columns(["dish_id", *columns])
        for row in part:
            assert row["dish_id"] not in rows, f"{row['dish_id']} appears twice"
            rows[row["dish_id"]] = {**row, "split": split}
    return rows


def _load_script():
    spec = importlib.util.spec_from_file_location("convert_nutrition5k_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_planted_bad_dish_is_reported_with_its_reason(tree, external: Path) -> None:
    root, expected = tree
    report = json.loads((external / REPORT_NAME).read_text(encoding="utf-8"))
    reported = {item["dish_id"]: item["reason"] for item in report["skipped"]}
    assert reported == expected
    by_id = {item["dish_id"]: item for item in report["skipped"]}
    assert by_id[EXTRA_DISH_ID]["detail"] == "dish folder missing"
    malformed = next(dish_id for dish_id, reason in expected.items() if reason == "no_metadata")
    assert re.match(r"row has \d+ fields; expected 6 dish fields", by_id[malformed]["detail"])
    assert by_id[malformed]["path"].startswith(str(root / "metadata" / "dish_metadata_cafe1.csv"))
    for item in report["skipped"]:
        assert item["split"] in SPLITS
        assert Path(item["path"].split(":")[0]).is_relative_to(root)
    assert report["skipped_by_reason"] == {
        reason: list(expected.values()).count(reason) for reason in set(expected.values())
    }


def test_the_rest_convert_and_nothing_is_lost(tree, external: Path) -> None:
    root, expected = tree
    layout = Nutrition5kLayout(root)
    all_ids = set(layout.split_ids("depth_train")) | set(layout.split_ids("depth_test"))
    rows = _rows(external, "mask_source")
    assert set(rows) == all_ids - set(expected)
    assert len(rows) == NUM_DISHES - (len(expected) - 1)
    report = json.loads((external / REPORT_NAME).read_text(encoding="utf-8"))
    for split in SPLITS:
        counts = report["counts"][split]
        assert counts["converted"] == sum(row["split"] == split for row in rows.values())
        assert counts["ids"] == counts["converted"] + counts["skipped"]
    assert sum(report["counts"][split]["ids"] for split in SPLITS) == len(all_ids)
    assert report["synthetic"] is True
    assert report["integrator"] == "heightmap"
    np.testing.assert_allclose(report["K"], nutrition5k_intrinsics())
    assert report["mask_sources"] == {"external": len(rows), "depth": 0}
    assert {row["mask_source"] for row in rows.values()} == {"external"}


def test_splits_follow_the_split_files_and_keep_plates_together(tree, external: Path) -> None:
    root, _ = tree
    layout = Nutrition5kLayout(root)
    rows = _rows(external)
    test_ids = set(layout.split_ids("depth_test"))
    for dish_id, row in rows.items():
        assert (row["split"] == "test") == (dish_id in test_ids)
    metadata = layout.parse_all_metadata().dishes
    train_ids = [dish_id for dish_id in layout.split_ids("depth_train") if dish_id in metadata]
    validation = {dish_id for dish_id, row in rows.items() if row["split"] == "validation"}
    assert validation, "val_fraction 0.25 of the train ids must give a non-empty validation split"
    for group in plate_groups(train_ids, metadata):
        sides = {rows[dish_id]["split"] for dish_id in group if dish_id in rows}
        assert len(sides) <= 1, f"plate group {group} straddles {sides}"


def test_loads_with_datasets_and_the_project_loader(external: Path) -> None:
    dataset = datasets.load_from_disk(str(external))
    assert isinstance(dataset, datasets.DatasetDict) and list(dataset) == list(SPLITS)
    assert dataset["train"].features == DATASET_FEATURES
    loaded = load_n5k_dataset(str(external))
    assert sum(len(loaded[split]) for split in SPLITS) == sum(len(dataset[split]) for split in SPLITS)


def test_image_and_depth_columns_hold_the_source_png_bytes(tree, external: Path) -> None:
    root, _ = tree
    layout = Nutrition5kLayout(root)
    dataset = datasets.load_from_disk(str(external))
    for split in SPLITS:
        raw = dataset[split].cast_column("depth", datasets.Image(decode=False))
        raw = raw.cast_column("image", datasets.Image(decode=False))
        for row in raw:
            assert row["depth"]["bytes"] == layout.depth_raw_path(row["dish_id"]).read_bytes()
            assert row["image"]["bytes"] == layout.rgb_path(row["dish_id"]).read_bytes()
    row = dataset["train"][0]
    decoded = np.asarray(row["depth"])
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, decode_depth_png(layout.depth_raw_path(row["dish_id"])))
    assert row["image"].mode == "RGB" and row["image"].size == (640, 480)


def test_external_mask_volumes_match_the_analytic_volumes(tree, external: Path) -> None:
    root, _ = tree
    truth = _truth(root)
    rows = _rows(external, "volume_ml", "plane", "K", "mask")
    errors = {}
    for dish_id, row in rows.items():
        analytic_ml = float(truth[dish_id]["volume_ml"])
        errors[dish_id] = row["volume_ml"] / analytic_ml - 1.0
        support = np.array(truth[dish_id]["support_plane"].split(), dtype=np.float64)
        assert np.dot(row["plane"][:3], support[:3]) > 0.9999
        assert row["plane"][3] == pytest.approx(support[3], abs=1e-3)
        np.testing.assert_array_equal(row["K"], nutrition5k_intrinsics().astype(np.float32))
        true_labels = cv2.imread(
            str(root / "ground_truth" / "masks" / f"{dish_id}.png"), cv2.IMREAD_UNCHANGED
        )
        np.testing.assert_array_equal(np.asarray(row["mask"]) > 0, true_labels > 0)
    print("\nexternal-mask volume errors:", {dish_id: round(error, 4) for dish_id, error in errors.items()})
    # The heightmap integrator's own accuracy on these scenes is 2% (median, n5k_hf.geometry.volume).
    assert np.median(np.abs(list(errors.values()))) <= 0.02
    assert max(abs(error) for error in errors.values()) <= 0.05


def test_volumes_csv_lists_every_row(external: Path) -> None:
    rows = _rows(external, "volume_ml")
    with open(external / VOLUMES_NAME, encoding="utf-8") as handle:
        listed = list(csv.DictReader(handle))
    assert [row["dish_id"] for row in listed] == list(rows)
    for row in listed:
        assert float(row["volume_ml"]) == pytest.approx(rows[row["dish_id"]]["volume_ml"], abs=1e-3)


def test_totals_and_ingredients_equal_the_csv_values(tree, external: Path) -> None:
    root, _ = tree
    columns = ("total_calories", "total_mass", "total_fat", "total_carb", "total_protein")
    rows = _rows(external, *columns, "ingredients", "cafe")
    lines = (root / "metadata" / "dish_metadata_cafe1.csv").read_text(encoding="utf-8").splitlines()
    csv_rows = {line.split(",")[0]: line.split(",") for line in lines}
    for dish_id, row in rows.items():
        fields = csv_rows[dish_id]
        for index, column in enumerate(columns, start=1):
            assert row[column] == np.float32(fields[index]), (dish_id, column)
        assert row["cafe"] == 1
        ingredients = [fields[start : start + 7] for start in range(6, len(fields), 7)]
        assert [item["id"] for item in row["ingredients"]] == [fields[0] for fields in ingredients]
        assert [item["name"] for item in row["ingredients"]] == [fields[1] for fields in ingredients]
        assert [item["grams"] for item in row["ingredients"]] == [
            np.float32(fields[2]) for fields in ingredients
        ]


def test_fallback_masks_give_volumes_within_10_percent_median(tree, fallback: Path) -> None:
    root, expected = tree
    truth = _truth(root)
    rows = _rows(fallback, "volume_ml", "mask_source")
    assert len(rows) == NUM_DISHES - (len(expected) - 1)
    assert {row["mask_source"] for row in rows.values()} == {"depth"}
    errors = np.array(
        [row["volume_ml"] / float(truth[dish_id]["volume_ml"]) - 1.0 for dish_id, row in rows.items()]
    )
    print(
        f"\nfallback-mask volume errors: median {np.median(errors):+.3f}, max |error| {np.abs(errors).max():.3f}"
    )
    assert np.median(np.abs(errors)) <= 0.10


def test_rerun_refuses_an_existing_output_and_overwrite_replaces_it(tree, fallback: Path) -> None:
    root, _ = tree
    before = _rows(fallback, "volume_ml")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_nutrition5k(root, fallback, val_fraction=0.25, progress=False)
    convert_nutrition5k(root, fallback, val_fraction=0.25, num_proc=1, overwrite=True, progress=False)
    after = _rows(fallback, "volume_ml")
    assert list(after) == list(before)  # same dishes, same splits, no duplicates (and 1 process == 2)
    assert [row["volume_ml"] for row in after.values()] == [row["volume_ml"] for row in before.values()]
    assert sorted(path.name for path in fallback.parent.iterdir()) == ["out"]  # no tmp or cache left


def test_a_failing_conversion_leaves_the_old_output_untouched(
    tree, external: Path, monkeypatch, tmp_path
) -> None:
    root, _ = tree
    output_dir = tmp_path / "out"
    shutil.copytree(external, output_dir)
    calls = []

    def convert_then_fail(dish_id, settings):
        calls.append(dish_id)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(dish_id, settings)

    original = dish_conversion.convert_dish
    monkeypatch.setattr(dish_conversion, "convert_dish", convert_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        convert_nutrition5k(root, output_dir, val_fraction=0.25, overwrite=True, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert _rows(output_dir) == _rows(external)


def test_strict_mode_stops_at_the_first_bad_dish(tree, tmp_path: Path) -> None:
    root, expected = tree
    with pytest.raises(BadDishError, match=r"no_metadata: .*dish_metadata_cafe1\.csv") as info:
        convert_nutrition5k(root, tmp_path / "out", strict=True, progress=False)
    assert expected[info.value.skipped.dish_id] == "no_metadata"
    assert list(tmp_path.iterdir()) == []


def test_strict_mode_names_the_bad_file_and_an_all_bad_split_stays_loadable(tmp_path: Path, capsys) -> None:
    root = tmp_path / "n5k"
    make_synthetic_nutrition5k(root, 4, seed=2)
    layout = Nutrition5kLayout(root)
    (bad,) = layout.split_ids("depth_test")
    layout.depth_raw_path(bad).write_bytes(b"")
    script = _load_script()
    argv = ["--n5k-root", str(root), "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert exit_on_user_error(lambda: script.main([*argv, "--strict"])) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: bad dish {bad} [test]: empty_file: {layout.depth_raw_path(bad)} (0 bytes) (strict mode stops at the first bad dish)\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["n5k"]

    assert exit_on_user_error(lambda: script.main([*argv, "--val-fraction", "0.34"])) == 0
    dataset = load_n5k_dataset(str(tmp_path / "out"))
    assert {split: len(dataset[split]) for split in SPLITS} == {"train": 2, "validation": 1, "test": 0}
    assert dataset["test"].features == DATASET_FEATURES


def test_script_errors_are_one_line(tree, tmp_path: Path, capsys) -> None:
    root, _ = tree
    script = _load_script()
    cases = {
        "missing root": (
            ["--n5k-root", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")],
            "root folder not found",
        ),
        "existing output": (
            ["--n5k-root", str(root), "--output-dir", str(tmp_path)],
            "already exists; pass --overwrite",
        ),
    }
    no_split = tmp_path / "no_split"
    shutil.copytree(root / "metadata", no_split / "metadata")
    cases["missing split file"] = (
        ["--n5k-root", str(no_split), "--output-dir", str(tmp_path / "o")],
        "split file not found",
    )
    for name, (argv, message) in cases.items():
        assert exit_on_user_error(lambda argv=argv: script.main(argv)) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (name, err)


def test_script_converts_and_prints_a_summary(tree, tmp_path: Path, capsys) -> None:
    root, expected = tree
    script = _load_script()
    argv = ["--n5k-root", str(root), "--output-dir", str(tmp_path / "out"), "--masks-dir",
            str(root / "ground_truth" / "masks"), "--no-progress", "--integrator", "column"]  # fmt: skip
    assert exit_on_user_error(lambda: script.main(argv)) == 0
    out = capsys.readouterr().out
    assert f"skipped {len(expected)} dishes" in out and "SYNTHETIC" in out
    report = json.loads((tmp_path / "out" / REPORT_NAME).read_text(encoding="utf-8"))
    assert report["integrator"] == "column"


def test_push_to_hub_sends_the_dataset_and_its_card(external: Path, monkeypatch) -> None:
    calls = {}

    def fake_push(dataset_dict, repo_id, *, private, card):
        calls.update(dataset_dict=dataset_dict, repo_id=repo_id, private=private, card=card)
        return card

    monkeypatch.setattr(convert_module, "push_dataset_to_hub", fake_push)
    push_converted_dataset(external, "someone/n5k-synthetic", private=True)
    assert calls["repo_id"] == "someone/n5k-synthetic" and calls["private"] is True
    assert list(calls["dataset_dict"]) == list(SPLITS)
    card = calls["card"]
    assert card.data.license == "cc-by-4.0" and card.data.task_categories == ["depth-estimation"]
    report = json.loads((external / REPORT_NAME).read_text(encoding="utf-8"))
    for split in SPLITS:
        assert f"| {split} | {report['counts'][split]['converted']} |" in card.text
    assert "Synthetic data" in card.text and "heightmap" in card.text
    assert "| skipped: decode_error | 1 |" in card.text


def test_push_to_hub_through_datasets_and_huggingface_hub(
    external: Path, monkeypatch, tmp_path: Path
) -> None:
    import n5k_hf.hub.dataset_card as dataset_card_module

    pushed = {}
    generated = "---\nconfigs:\n- config_name: default\ndataset_info:\n  features: []\n---\n"
    (tmp_path / "README.md").write_text(generated, encoding="utf-8")

    def fake_dataset_push(self, repo_id, **kwargs):
        pushed["data"] = (repo_id, {split: len(part) for split, part in self.items()}, kwargs["private"])

    def fake_download(repo_id, filename, **kwargs):
        return str(tmp_path / filename)

    def fake_card_push(self, repo_id, **kwargs):
        pushed["card"] = (repo_id, self.content)

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_dataset_push)
    monkeypatch.setattr(dataset_card_module, "hf_hub_download", fake_download)
    monkeypatch.setattr(dataset_card_module.DatasetCard, "push_to_hub", fake_card_push)
    push_converted_dataset(external, "someone/n5k", private=False)
    report = json.loads((external / REPORT_NAME).read_text(encoding="utf-8"))
    assert pushed["data"] == (
        "someone/n5k",
        {split: report["counts"][split]["converted"] for split in SPLITS},
        False,
    )
    repo_id, content = pushed["card"]
    assert repo_id == "someone/n5k"
    assert "config_name: default" in content and "dataset_info:" in content  # generated metadata kept
    assert "license: cc-by-4.0" in content and "Nutrition5k" in content


def test_a_synthetic_tree_with_another_camera_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "n5k"
    make_synthetic_nutrition5k(root, 1, seed=4)
    camera_path = root / "ground_truth" / "camera.json"
    camera = json.loads(camera_path.read_text(encoding="utf-8"))
    camera["K"][0][0] = 616.0
    camera_path.write_text(json.dumps(camera), encoding="utf-8")
    with pytest.raises(ValueError, match=r"camera\.json: the synthetic dishes were rendered with K="):
        convert_nutrition5k(root, tmp_path / "out", progress=False)


def _split_rows(output_dir: Path) -> dict[str, list[tuple[str, float, bytes]]]:
    """Per split, in row order: (dish_id, volume_ml, mask PNG bytes)."""
    dataset = datasets.load_from_disk(str(output_dir))
    rows = {}
    for split in SPLITS:
        part = dataset[split].cast_column("mask", datasets.Image(decode=False))
        rows[split] = [(row["dish_id"], row["volume_ml"], row["mask"]["bytes"]) for row in part]
    return rows


def test_many_chunks_over_two_processes_give_the_one_process_rows_in_split_order(
    tree, external: Path, monkeypatch, tmp_path: Path
) -> None:
    root, _ = tree
    monkeypatch.setattr(parallel_conversion, "MIN_CHUNK_DISHES", 2)  # 2-3 dishes per chunk
    output_dir = tmp_path / "out"
    convert_nutrition5k(
        root,
        output_dir,
        masks_dir=root / "ground_truth" / "masks",
        val_fraction=0.25,
        num_proc=2,
        progress=False,
    )
    assert len(list((output_dir / "train").glob("data-*.arrow"))) > 2  # one shard per chunk with rows
    assert _split_rows(output_dir) == _split_rows(external)  # same rows, same order, same bytes
    for name in (REPORT_NAME, VOLUMES_NAME):
        ours = (
            json.loads((output_dir / name).read_text())
            if name == REPORT_NAME
            else (output_dir / name).read_text()
        )
        theirs = (
            json.loads((external / name).read_text())
            if name == REPORT_NAME
            else (external / name).read_text()
        )
        if name == REPORT_NAME:
            for report in (ours, theirs):
                report.pop("elapsed_s"), report.pop("output_dir")
        assert ours == theirs


def test_plan_chunks_cuts_contiguous_chunks_in_split_order(tmp_path: Path) -> None:
    ids = {"train": [f"t{i}" for i in range(300)], "validation": [], "test": [f"x{i}" for i in range(70)]}
    tasks = parallel_conversion.plan_chunks(ids, tmp_path, num_proc=2)
    # 300 train ids over 2 processes x 4 chunks -> 38 per chunk; 70 test ids -> at least 16 per chunk.
    assert [(task.split, task.index, len(task.dish_ids)) for task in tasks] == [
        *(("train", index, 38) for index in range(7)),
        ("train", 7, 34),
        *(("test", index, 16) for index in range(4)),
        ("test", 4, 6),
    ]
    assert [dish_id for task in tasks if task.split == "train" for dish_id in task.dish_ids] == ids["train"]
    assert {task.folder for task in tasks} == {str(tmp_path / "train"), str(tmp_path / "test")}
    single = parallel_conversion.plan_chunks(ids, tmp_path, num_proc=1)
    assert [(task.split, len(task.dish_ids)) for task in single] == [("train", 300), ("test", 70)]


def test_strict_mode_with_workers_stops_and_writes_nothing(tree, monkeypatch, tmp_path: Path) -> None:
    root, expected = tree
    layout = Nutrition5kLayout(root)
    metadata_path = layout.dish_metadata_path(1)
    monkeypatch.setattr(parallel_conversion, "MIN_CHUNK_DISHES", 2)
    # Only file-level faults (the malformed metadata row would stop the run before any worker starts).
    original = metadata_path.read_text(encoding="utf-8")
    malformed = next(dish_id for dish_id, reason in expected.items() if reason == "no_metadata")
    try:
        metadata_path.write_text(
            "\n".join(row.removesuffix(",extra") for row in original.splitlines()) + "\n", encoding="utf-8"
        )
        with pytest.raises(BadDishError) as info:
            convert_nutrition5k(root, tmp_path / "out", strict=True, num_proc=2, progress=False)
    finally:
        metadata_path.write_text(original, encoding="utf-8")
    assert info.value.skipped.dish_id != malformed
    assert expected[info.value.skipped.dish_id] == info.value.skipped.reason
    assert list(tmp_path.iterdir()) == []


def test_an_error_in_a_worker_names_the_dish_and_leaves_nothing(tree, monkeypatch, tmp_path: Path) -> None:
    root, expected = tree
    layout = Nutrition5kLayout(root)
    victim = next(dish_id for dish_id in layout.split_ids("depth_test") if dish_id not in expected)
    original = dish_conversion.convert_dish

    def fail_on_victim(dish_id, settings):
        if dish_id == victim:
            raise RuntimeError("worker bug")
        return original(dish_id, settings)

    monkeypatch.setattr(dish_conversion, "convert_dish", fail_on_victim)  # inherited by forked workers
    with pytest.raises(RuntimeError, match="worker bug") as info:
        convert_nutrition5k(root, tmp_path / "out", num_proc=2, val_fraction=0.25, progress=False)
    assert any(victim in note for note in getattr(info.value, "__notes__", []))
    assert list(tmp_path.iterdir()) == []
