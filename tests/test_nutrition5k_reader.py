"""Nutrition5k layout, split files, metadata parser and plate groups, on the real metadata files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from n5k_hf.data.nutrition5k import (
    DishMetadata,
    Ingredient,
    MetadataParseError,
    Nutrition5kLayout,
    Nutrition5kLayoutError,
    SplitFileError,
    dish_timestamp_s,
    parse_dish_metadata,
    plate_groups,
    read_split_ids,
    split_train_validation,
)

REAL_ROOT = Path(__file__).parents[2] / "shared" / "nutrition5k"
needs_real = pytest.mark.skipif(
    not (REAL_ROOT / "metadata" / "dish_metadata_cafe1.csv").is_file(),
    reason=f"real Nutrition5k metadata not found at {REAL_ROOT}",
)

ROW_A = (
    "dish_1000000000,200.0,150.0,5.0,20.0,10.0,"
    "ingr_0000000001,white rice,100.0,130.0,0.3,28.0,2.7,"
    "ingr_0000000002,grilled chicken,50.0,70.0,4.7,0.0,7.3"
)
ROW_B = "dish_1000000100,50.0,40.0,1.0,2.0,3.0,ingr_0000000003,apple,40.0,50.0,1.0,2.0,3.0"


@pytest.fixture(scope="module")
def real_layout() -> Nutrition5kLayout:
    return Nutrition5kLayout(REAL_ROOT)


@pytest.fixture(scope="module")
def real_metadata(real_layout: Nutrition5kLayout):
    return real_layout.load_metadata()


def test_layout_paths_follow_the_real_dataset(tmp_path: Path) -> None:
    layout = Nutrition5kLayout(tmp_path)
    dish_dir = tmp_path / "imagery" / "realsense_overhead" / "dish_1561662216"
    assert layout.dish_dir("dish_1561662216") == dish_dir
    assert layout.rgb_path("dish_1561662216") == dish_dir / "rgb.png"
    assert layout.depth_raw_path("dish_1561662216") == dish_dir / "depth_raw.png"
    assert layout.depth_color_path("dish_1561662216") == dish_dir / "depth_color.png"
    assert layout.split_path("depth_test") == tmp_path / "dish_ids" / "splits" / "depth_test_ids.txt"
    assert layout.dish_metadata_path(2) == tmp_path / "metadata" / "dish_metadata_cafe2.csv"
    assert dish_timestamp_s("dish_1561662216") == 1561662216
    with pytest.raises(ValueError, match="invalid dish id"):
        layout.dish_dir("../dish_1")
    with pytest.raises(ValueError, match="unknown split"):
        layout.split_path("depth_val")


def test_missing_root_and_split_file_name_the_path(tmp_path: Path) -> None:
    missing_root = tmp_path / "nope"
    with pytest.raises(Nutrition5kLayoutError, match=re.escape(str(missing_root))):
        Nutrition5kLayout(missing_root)
    layout = Nutrition5kLayout(tmp_path)
    with pytest.raises(Nutrition5kLayoutError, match=r"depth_train_ids\.txt"):
        layout.split_ids("depth_train")
    with pytest.raises(Nutrition5kLayoutError, match=r"dish_metadata_cafe1\.csv"):
        layout.load_metadata()


def test_read_split_ids_keeps_order_skips_blanks_and_reports_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("dish_3\n\n  dish_1  \ndish_2\n")
    assert read_split_ids(path) == ["dish_3", "dish_1", "dish_2"]
    path.write_text("dish_3\ndish_1\ndish_3\n")
    with pytest.raises(SplitFileError, match=r"line 3: duplicate dish_3 \(first on line 1\)"):
        read_split_ids(path)
    path.write_text("dish_3\nplate_7\n")
    with pytest.raises(SplitFileError, match="line 2: malformed dish id 'plate_7'"):
        read_split_ids(path)


def test_malformed_rows_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "dish_metadata_cafe1.csv"
    rows = [
        ROW_A,
        ROW_B + ",ingr_0000000004,pear",  # 15 fields: not 6 + 7k
        "",
        ROW_B.replace("50.0,40.0", "fifty,40.0", 1),  # non-numeric total
        ROW_B.replace("dish_1000000100", "dish_1000000200"),
        ROW_A,  # duplicate id
    ]
    path.write_text("\n".join(rows) + "\n")
    result = parse_dish_metadata(path, cafe=1)
    assert sorted(result.dishes) == ["dish_1000000000", "dish_1000000200"]
    assert [(error.line_number, error.dish_id) for error in result.errors] == [
        (2, "dish_1000000100"),
        (4, "dish_1000000100"),
        (6, "dish_1000000000"),
    ]
    assert "15 fields" in result.errors[0].message
    assert "total_calories" in result.errors[1].message
    assert "duplicate" in result.errors[2].message
    assert all(error.path == path for error in result.errors)
    dish = result.dishes["dish_1000000000"]
    assert (dish.total_calories, dish.total_mass, dish.total_fat, dish.total_carb, dish.total_protein) == (
        200.0,
        150.0,
        5.0,
        20.0,
        10.0,
    )
    assert [ingredient.name for ingredient in dish.ingredients] == ["white rice", "grilled chicken"]
    assert dish.ingredients[1].grams == 50.0 and dish.ingredients[1].protein == 7.3


def test_cafe2_totals_are_missing_except_mass(tmp_path: Path) -> None:
    path = tmp_path / "dish_metadata_cafe2.csv"
    path.write_text(ROW_B.replace("50.0,40.0,1.0,2.0,3.0", "0.000000,40.0,0.000000,0.000000,0.000000", 1))
    dish = parse_dish_metadata(path, cafe=2).dishes["dish_1000000100"]
    assert dish.cafe == 2
    assert (dish.total_calories, dish.total_fat, dish.total_carb, dish.total_protein) == (None,) * 4
    assert dish.total_mass == 40.0
    assert dish.ingredients[0].calories == 50.0


def test_load_metadata_raises_on_error_rows(tmp_path: Path) -> None:
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "dish_metadata_cafe1.csv").write_text(ROW_A + "\ndish_5,1,2\n")
    (tmp_path / "metadata" / "dish_metadata_cafe2.csv").write_text("")
    layout = Nutrition5kLayout(tmp_path)
    with pytest.raises(MetadataParseError, match=r"dish_metadata_cafe1\.csv:2 \(dish_5\)"):
        layout.load_metadata()
    assert list(layout.parse_all_metadata().dishes) == ["dish_1000000000"]


def _dish(dish_id: str, ingredient_ids: list[str], mass_g: float) -> DishMetadata:
    ingredients = tuple(Ingredient(i, i, 1.0, 1.0, 0.0, 0.0, 0.0) for i in ingredient_ids)
    return DishMetadata(dish_id, 1.0, mass_g, 0.0, 0.0, 0.0, ingredients, 1)


def test_plate_groups_rule_on_hand_made_dishes() -> None:
    metadata = {
        dish.dish_id: dish
        for dish in [
            _dish("dish_1000", ["a"], 50),
            _dish("dish_1030", ["a", "b"], 90),  # adds b: same plate
            _dish("dish_1060", ["a", "b"], 90),  # rescan: same plate
            _dish("dish_1100", ["c"], 40),  # not a superset: new plate
            _dish("dish_1500", ["c", "d"], 80),  # superset but 400 s later: new plate
            _dish("dish_1520", ["c", "d"], 77),  # 3 g lighter: a re-weighing, same plate
            _dish("dish_1540", ["c", "d"], 73.5),  # 3.5 g lighter: new plate
        ]
    }
    shuffled = ["dish_1520", "dish_1060", "dish_1000", "dish_1540", "dish_1500", "dish_1100", "dish_1030"]
    assert plate_groups(shuffled, metadata) == [
        ["dish_1000", "dish_1030", "dish_1060"],
        ["dish_1100"],
        ["dish_1500", "dish_1520"],
        ["dish_1540"],
    ]
    with pytest.raises(KeyError, match="dish_9"):
        plate_groups(["dish_9"], metadata)


@needs_real
def test_real_metadata_counts_and_values(real_layout: Nutrition5kLayout, real_metadata) -> None:
    cafe1 = parse_dish_metadata(real_layout.dish_metadata_path(1), cafe=1)
    cafe2 = parse_dish_metadata(real_layout.dish_metadata_path(2), cafe=2)
    assert (len(cafe1.dishes), len(cafe1.errors)) == (4768, 0)
    assert (len(cafe2.dishes), len(cafe2.errors)) == (238, 0)
    assert len(real_metadata) == 5006

    dish = real_metadata["dish_1561662216"]
    assert dish.cafe == 1
    assert dish.total_calories == 300.794281
    assert dish.total_mass == 193.0
    assert dish.total_fat == 12.387489
    assert dish.total_carb == 28.218290
    assert dish.total_protein == 18.633970
    assert len(dish.ingredients) == 17
    assert (dish.ingredients[0].id, dish.ingredients[0].name, dish.ingredients[0].grams) == (
        "ingr_0000000508",
        "soy sauce",
        3.398568,
    )
    assert dish.ingredients[5].name == "brown rice" and dish.ingredients[5].calories == 75.48

    second = real_metadata["dish_1562688426"]
    assert [i.name for i in second.ingredients] == ["roasted potatoes", "chicken apple sausage"]
    assert second.total_calories == 137.569992

    cafe2_dish = real_metadata["dish_1572974428"]
    assert cafe2_dish.cafe == 2 and cafe2_dish.total_mass == 74.0
    assert all(
        d.total_calories is None and d.total_fat is None and d.total_carb is None and d.total_protein is None
        for d in cafe2.dishes.values()
    )
    assert all(d.total_mass is not None and d.total_mass > 0 for d in cafe2.dishes.values())

    deprecated = [d for d in cafe1.dishes.values() if any(i.name == "deprecated" for i in d.ingredients)]
    assert len(deprecated) == 31
    depth_test = set(real_layout.split_ids("depth_test"))
    assert sum(d.dish_id in depth_test for d in deprecated) == 8


@needs_real
def test_real_splits(real_layout: Nutrition5kLayout, real_metadata) -> None:
    sizes = {name: len(real_layout.split_ids(name)) for name in ("depth_train", "depth_test")}
    assert sizes == {"depth_train": 2758, "depth_test": 507}
    sizes = {name: len(real_layout.split_ids(name)) for name in ("rgb_train", "rgb_test")}
    assert sizes == {"rgb_train": 4059, "rgb_test": 709}
    depth_train = set(real_layout.split_ids("depth_train"))
    depth_test = set(real_layout.split_ids("depth_test"))
    assert not depth_train & depth_test
    assert depth_train <= set(real_layout.split_ids("rgb_train"))
    assert all(real_metadata[d].cafe == 1 for d in depth_train | depth_test)


@needs_real
def test_real_plate_groups_rarely_cross_the_official_split(real_layout, real_metadata) -> None:
    train = real_layout.split_ids("depth_train")
    test = real_layout.split_ids("depth_test")
    groups = plate_groups(train + test, real_metadata)
    train_set = set(train)
    crossing = [g for g in groups if len({d in train_set for d in g}) == 2]
    assert len(groups) == 1241
    assert sum(len(g) > 1 for g in groups) > 500  # incremental scans are common, and found
    # Measured: the official split itself separates 8 same-plate sequences (28 dishes).
    assert (len(crossing), sum(len(g) for g in crossing)) == (8, 28)
    assert sorted(d for g in groups for d in g) == sorted(train + test)


@needs_real
def test_real_train_validation_split_is_seeded_and_keeps_plates_together(real_layout, real_metadata) -> None:
    train_ids = real_layout.split_ids("depth_train")
    train, val = split_train_validation(train_ids, real_metadata, val_fraction=0.1, seed=42)
    assert len(train) + len(val) == 2758
    assert not set(train) & set(val)
    assert abs(len(val) - 276) <= 2
    val_set = set(val)
    for group in plate_groups(train_ids, real_metadata):
        assert len({d in val_set for d in group}) == 1
    assert split_train_validation(train_ids, real_metadata, 0.1, seed=42) == (train, val)
    _, other_val = split_train_validation(train_ids, real_metadata, 0.1, seed=7)
    assert set(other_val) != val_set
    assert abs(len(other_val) - 276) <= 2
