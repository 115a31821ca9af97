"""Synthetic Nutrition5k: determinism, the real layout and formats, and volumes a height map recovers."""

from __future__ import annotations

import csv
import json
import re
import runpy
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from n5k_hf.data.nutrition5k import DishMetadata, Ingredient, Nutrition5kLayout, parse_dish_metadata
from n5k_hf.data.synthetic import (
    FOOD_TYPES,
    VOLUMES_CSV_HEADER,
    SyntheticConfig,
    format_metadata_row,
    make_synthetic_nutrition5k,
    render_synthetic_dish,
    synthetic_dish_ids,
)
from n5k_hf.geometry.depth import decode_depth_png, depth_raw_to_m
from n5k_hf.geometry.intrinsics import nutrition5k_intrinsics
from n5k_hf.geometry.plane import Plane, table_ring_mask
from n5k_hf.geometry.volume import integrate_volume_ml

K = nutrition5k_intrinsics()
NUM_DISHES = 20
SCRIPT = Path(__file__).parents[1] / "scripts" / "make_synthetic_n5k.py"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_n5k")
    start = time.perf_counter()
    make_synthetic_nutrition5k(root, NUM_DISHES, seed=3, test_fraction=0.2)
    print(f"\n{NUM_DISHES} synthetic dishes written in {time.perf_counter() - start:.2f} s")
    return root


def _read_volumes(root: Path) -> list[dict[str, str]]:
    with (root / "ground_truth" / "volumes.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_render_is_deterministic_and_seed_dependent() -> None:
    first = render_synthetic_dish(np.random.default_rng(11), K)
    again = render_synthetic_dish(np.random.default_rng(11), K)
    other = render_synthetic_dish(np.random.default_rng(12), K)
    for name in ("rgb", "depth_raw", "food_label_mask", "support_mask"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert first.item_volumes_ml == again.item_volumes_ml
    assert first.metadata == again.metadata
    assert not np.array_equal(first.depth_raw, other.depth_raw)
    assert first.item_volumes_ml != other.item_volumes_ml


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rendered_dish_formats_and_ground_truth(seed: int) -> None:
    dish = render_synthetic_dish(np.random.default_rng(seed), K)
    assert dish.rgb.shape == (480, 640, 3) and dish.rgb.dtype == np.uint8
    assert dish.depth_raw.shape == (480, 640) and dish.depth_raw.dtype == np.uint16
    assert dish.depth_raw.max() <= 4000  # nothing beyond 0.4 m
    zero_share = float((dish.depth_raw == 0).mean())
    assert 0.01 <= zero_share <= 0.4
    # noise about 1 mm: compare on the table/support away from edges where both are valid
    valid = (dish.depth_raw > 0) & np.isfinite(dish.depth_clean_m) & ~dish.food_mask
    error_mm = (dish.depth_raw[valid] / 10.0) - dish.depth_clean_m[valid] * 1000.0
    assert 0.5 < float(np.std(error_mm)) < 2.0
    assert abs(float(np.median(error_mm))) < 0.2

    labels = np.unique(dish.food_label_mask)
    num_items = len(dish.item_volumes_ml)
    assert 1 <= num_items <= 4
    assert labels.tolist() == list(range(num_items + 1))
    assert not (dish.support_mask & dish.food_mask).any()
    assert dish.volume_ml == pytest.approx(sum(solid.volume_ml for solid in dish.scene.solids[1:]))
    assert dish.volume_above_table_ml > dish.volume_ml

    # the plane-fitting ring around the food lies on the flat support surface
    ring = table_ring_mask(dish.food_mask)
    assert dish.support_mask[ring].all()
    ring_rows, ring_cols = np.nonzero(ring)
    rays = np.linalg.inv(K) @ np.stack([ring_cols, ring_rows, np.ones(len(ring_rows))])
    points = (rays * dish.depth_clean_m[ring_rows, ring_cols]).T
    heights_m = points @ dish.support_plane[:3] + dish.support_plane[3]
    np.testing.assert_allclose(heights_m, 0.0, atol=1e-5)

    metadata = dish.metadata
    assert metadata.dish_id == dish.dish_id and metadata.cafe == 1
    assert metadata.total_mass == pytest.approx(sum(i.grams for i in metadata.ingredients), abs=1e-5)
    assert metadata.total_calories == pytest.approx(sum(i.calories for i in metadata.ingredients), abs=1e-5)
    foods = {food.name: food for food in FOOD_TYPES}
    assert [i.name for i in metadata.ingredients] == list(dict.fromkeys(dish.item_food_names))
    for ingredient in metadata.ingredients:
        food = foods[ingredient.name]
        assert ingredient.id == food.ingredient_id
        assert ingredient.calories == pytest.approx(ingredient.grams * food.kcal_per_g, abs=1e-5)
        assert ingredient.protein == pytest.approx(ingredient.grams * food.protein_g_per_g, abs=1e-5)
    expected_mass_g = sum(
        volume_ml * foods[name].density_g_per_ml
        for volume_ml, name in zip(dish.item_volumes_ml, dish.item_food_names)
    )
    assert metadata.total_mass == pytest.approx(expected_mass_g, abs=1e-4)


def test_exact_depth_integrates_to_both_reference_volumes() -> None:
    config = SyntheticConfig(sensor_effects=False)
    for seed in (4, 5, 6):
        dish = render_synthetic_dish(np.random.default_rng(seed), K, config=config)
        depth_m = depth_raw_to_m(dish.depth_raw)
        assert np.array_equal(np.isnan(depth_m), np.isnan(dish.depth_clean_m))
        fitted_ml = integrate_volume_ml(depth_m, dish.food_mask, K, "heightmap")
        assert fitted_ml == pytest.approx(dish.volume_ml, rel=0.015)
        table_ml = integrate_volume_ml(
            depth_m, dish.food_mask, K, "heightmap", plane=Plane.from_array(dish.table_plane)
        )
        assert table_ml == pytest.approx(dish.volume_above_table_ml, rel=0.015)


def test_written_layout_and_formats(synthetic_root: Path) -> None:
    layout = Nutrition5kLayout(synthetic_root)
    all_ids = (synthetic_root / "dish_ids" / "dish_ids_all.txt").read_text().split()
    assert all_ids == synthetic_dish_ids(NUM_DISHES, seed=3)
    assert all(re.fullmatch(r"dish_\d{10}", dish_id) for dish_id in all_ids)
    train, test = layout.split_ids("depth_train"), layout.split_ids("depth_test")
    assert len(test) == 4 and len(train) == 16
    assert sorted(train + test) == sorted(all_ids)
    assert layout.split_ids("rgb_train") == train and layout.split_ids("rgb_test") == test

    for dish_id in all_ids[:3]:
        raw = decode_depth_png(layout.depth_raw_path(dish_id))
        assert raw.dtype == np.uint16 and raw.shape == (480, 640)
        rgb = cv2.imread(str(layout.rgb_path(dish_id)), cv2.IMREAD_UNCHANGED)
        assert rgb.dtype == np.uint8 and rgb.shape == (480, 640, 3)
        color = cv2.imread(str(layout.depth_color_path(dish_id)), cv2.IMREAD_UNCHANGED)
        assert color.dtype == np.uint8 and color.shape == (480, 640, 3)
        assert (color[raw == 0] == 0).all()

    parsed = parse_dish_metadata(layout.dish_metadata_path(1), cafe=1)
    assert parsed.errors == []
    assert list(parsed.dishes) == all_ids
    assert layout.load_metadata().keys() == parsed.dishes.keys()

    volumes = _read_volumes(synthetic_root)
    with (synthetic_root / "ground_truth" / "volumes.csv").open() as handle:
        assert tuple(handle.readline().strip().split(",")) == VOLUMES_CSV_HEADER
    assert [row["dish_id"] for row in volumes] == all_ids
    for row in volumes:
        items = [float(value) for value in row["item_volumes_ml"].split(";")]
        assert len(items) == int(row["num_items"])
        assert sum(items) == pytest.approx(float(row["volume_ml"]), abs=1e-3)
        mask = cv2.imread(str(synthetic_root / "ground_truth" / "masks" / f"{row['dish_id']}.png"), -1)
        assert mask.dtype == np.uint8 and mask.shape == (480, 640)
        assert np.unique(mask).tolist() == list(range(len(items) + 1))
        assert row["support"] in ("plate", "bowl")
        dish = parsed.dishes[row["dish_id"]]
        assert dish.total_mass > 0 and len(dish.ingredients) >= 1
    camera = json.loads((synthetic_root / "ground_truth" / "camera.json").read_text())
    np.testing.assert_allclose(camera["K"], K)


def test_heightmap_of_written_depth_matches_analytic_volume(synthetic_root: Path) -> None:
    layout = Nutrition5kLayout(synthetic_root)
    errors = []
    for row in _read_volumes(synthetic_root):
        depth_m = depth_raw_to_m(decode_depth_png(layout.depth_raw_path(row["dish_id"])))
        mask = cv2.imread(str(synthetic_root / "ground_truth" / "masks" / f"{row['dish_id']}.png"), -1) > 0
        measured_ml = integrate_volume_ml(depth_m, mask, K, method="heightmap")
        errors.append(abs(measured_ml - float(row["volume_ml"])) / float(row["volume_ml"]))
    print(f"\nheightmap vs analytic over {len(errors)} dishes: median {100 * np.median(errors):.2f}%")
    assert np.median(errors) <= 0.02
    assert np.max(errors) <= 0.10


def test_same_seed_writes_identical_bytes_with_any_worker_count(tmp_path: Path) -> None:
    make_synthetic_nutrition5k(tmp_path / "a", 3, seed=9)
    make_synthetic_nutrition5k(tmp_path / "b", 3, seed=9, num_workers=2)
    make_synthetic_nutrition5k(tmp_path / "c", 3, seed=10)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    # per dish 3 images + 1 mask; 4 split files, 3 id lists, 3 metadata files, volumes.csv, camera.json
    assert len(files_a) == 3 * 4 + 12
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    depth_a = sorted((tmp_path / "a").rglob("depth_raw.png"))[0].read_bytes()
    depth_c = sorted((tmp_path / "c").rglob("depth_raw.png"))[0].read_bytes()
    assert depth_a != depth_c


def test_metadata_row_round_trips_through_the_parser(tmp_path: Path) -> None:
    dish = DishMetadata(
        "dish_1550000123",
        120.5,
        100.0,
        2.25,
        20.0,
        5.0,
        (Ingredient("ingr_0000000026", "white rice", 100.0, 120.5, 2.25, 20.0, 5.0),),
        1,
    )
    row = format_metadata_row(dish)
    assert row == (
        "dish_1550000123,120.500000,100.000000,2.250000,20.000000,5.000000,"
        "ingr_0000000026,white rice,100.000000,120.500000,2.250000,20.000000,5.000000"
    )
    path = tmp_path / "dish_metadata_cafe1.csv"
    path.write_text(row + "\n")
    assert parse_dish_metadata(path, cafe=1).dishes == {dish.dish_id: dish}
    bad = DishMetadata(
        "dish_1", 1.0, 1.0, 1.0, 1.0, 1.0, (Ingredient("ingr_1", "rice, white", 1, 1, 1, 1, 1),), 1
    )
    with pytest.raises(ValueError, match="commas"):
        format_metadata_row(bad)


def test_script_writes_the_requested_dishes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = runpy.run_path(str(SCRIPT), run_name="make_synthetic_n5k")
    script["main"](
        ["--output-dir", str(tmp_path), "--num-dishes", "2", "--seed", "1", "--test-fraction", "0.5"]
    )
    assert "wrote 2 synthetic dishes" in capsys.readouterr().out
    layout = Nutrition5kLayout(tmp_path)
    assert len(layout.split_ids("depth_train")) == 1 and len(layout.split_ids("depth_test")) == 1
