"""Per-item volume prediction on photos: known-depth scenes, item rules, K sources, the script's errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from n5k_hf.data.scenes import Box, Cylinder, Scene, SphericalCap, raycast_depth_m
from n5k_hf.data.synthetic import SyntheticConfig, render_synthetic_dish
from n5k_hf.geometry.depth import decode_depth_png, depth_raw_to_m
from n5k_hf.geometry.intrinsics import intrinsics_from_fov, nutrition5k_intrinsics
from n5k_hf.prediction import (
    PredictionInputError,
    load_image,
    predict_volumes,
    resolve_intrinsics,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "predict_volume.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("predict_volume_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(argv: list[str]) -> int:
    from n5k_hf.cli import exit_on_user_error

    script = _load_script()
    return exit_on_user_error(lambda: script.main(argv))


def _known_scene() -> Scene:
    """Three items on a table tilted 2 degrees: a cap and a box off centre, a cylinder under the camera."""
    return Scene(
        solids=(
            SphericalCap(radius_m=0.05, height_m=0.03, center_x_m=-0.12, center_y_m=0.06),
            Box(0.06, 0.04, 0.025, center_x_m=0.12, center_y_m=-0.06, yaw_deg=20.0),
            Cylinder(radius_m=0.03, height_m=0.02),
        ),
        tilt_deg=2.0,
        tilt_axis_deg=30.0,
    )


def _write_png(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("hw", [(480, 640), (240, 320)])
def test_each_item_volume_within_2pct_of_analytic_with_ground_truth_depth(tmp_path, caplog, hw):
    height, width = hw
    scene = _known_scene()
    K = nutrition5k_intrinsics(width, height)
    depth_m, object_id = raycast_depth_m(scene, K, height, width)
    assert np.isfinite(depth_m).all()
    labels = np.where(object_id > 0, object_id, 0).astype(np.uint8)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    image = _write_png(tmp_path / "scene.png", np.full((height, width, 3), 128, dtype=np.uint8))
    mask = _write_png(tmp_path / "labels.png", labels)
    seen_shapes = []

    def ground_truth_depth(rgb: np.ndarray) -> np.ndarray:
        seen_shapes.append(rgb.shape)
        return depth_m

    with caplog.at_level(logging.WARNING, logger="n5k_hf.prediction"):
        result = predict_volumes([image], ground_truth_depth, mask_paths=[mask])
    assert seen_shapes == [(height, width, 3)]
    assert "Nutrition5k camera" in caplog.text
    (entry,) = result["images"]
    assert entry["K_source"] == "nutrition5k_default"
    np.testing.assert_allclose(entry["K"], K)
    np.testing.assert_allclose(entry["table_plane"], scene.plane_array(), atol=1e-6)
    analytic_ml = [solid.volume_ml for solid in scene.solids]
    assert [item["source"] for item in entry["items"]] == ["label_value"] * 3
    for item, expected_ml, label in zip(entry["items"], analytic_ml, (1, 2, 3)):
        assert item["label"] == label
        assert item["area_px"] == int((labels == label).sum())
        assert item["volume_ml"] == pytest.approx(expected_ml, rel=0.02), (
            label,
            item["volume_ml"],
            expected_ml,
        )
    # The cylinder stands under the camera: its visible pixels are its flat top, 20 mm above the table.
    assert entry["items"][2]["mean_height_mm"] == pytest.approx(20.0, abs=0.3)
    assert entry["total_volume_ml"] == pytest.approx(sum(item["volume_ml"] for item in entry["items"]))


def test_item_rules_binary_components_and_one_item_per_file(tmp_path):
    height, width = 240, 320
    scene = _known_scene()
    K = nutrition5k_intrinsics(width, height)
    depth_m, object_id = raycast_depth_m(scene, K, height, width)
    image = _write_png(tmp_path / "scene.png", np.full((height, width, 3), 90, dtype=np.uint8))
    binary = _write_png(tmp_path / "binary.png", np.where(object_id > 0, 255, 0).astype(np.uint8))
    per_file = [
        _write_png(tmp_path / f"item{i}.png", (object_id == i).astype(np.uint8) * 255) for i in (1, 2, 3)
    ]

    by_components = predict_volumes([image], lambda rgb: depth_m, mask_paths=[binary])["images"][0]["items"]
    by_files = predict_volumes([image], lambda rgb: depth_m, mask_paths=per_file)["images"][0]["items"]

    # Connected components come largest first; files come in the order given.
    areas = [int((object_id == i).sum()) for i in (1, 2, 3)]
    assert [item["area_px"] for item in by_components] == sorted(areas, reverse=True)
    assert [item["source"] for item in by_components] == ["connected_component"] * 3
    assert [item["area_px"] for item in by_files] == areas
    assert [item["mask"] for item in by_files] == [str(path) for path in per_file]
    volume_by_area = {item["area_px"]: item["volume_ml"] for item in by_files}
    for item in by_components:
        assert item["volume_ml"] == pytest.approx(volume_by_area[item["area_px"]], rel=1e-12)


def test_exif_35mm_focal_length_gives_k_by_the_diagonal_rule(tmp_path):
    width, height, focal_35mm = 400, 300, 26
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = focal_35mm
    Image.new("RGB", (width, height), (120, 100, 80)).save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.focal_length_35mm == 26.0
    K, source = resolve_intrinsics(width, height, focal_35mm=loaded.focal_length_35mm)
    assert source == "exif"
    # 35 mm equivalent = same diagonal field of view as 36x24 mm: f_px = f35 * hypot(W, H) / hypot(36, 24).
    expected_fx = 26.0 * 500.0 / math.hypot(36.0, 24.0)
    assert expected_fx == pytest.approx(300.4626, abs=1e-4)
    np.testing.assert_allclose(K, [[expected_fx, 0, 199.5], [0, expected_fx, 149.5], [0, 0, 1]])
    # Flags win over EXIF; a photo without the tag has none.
    assert resolve_intrinsics(width, height, fx_px=500.0, fy_px=510.0, focal_35mm=26.0)[1] == "flags"
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (width, height)).save(plain)
    assert load_image(plain).focal_length_35mm is None


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from n5k_hf.modeling import build_image_processor, load_depth_model, save_model_for_pipeline

    directory = tmp_path_factory.mktemp("tiny_model")
    return save_model_for_pipeline(
        load_depth_model(model_config="tiny"), build_image_processor(size=126), directory
    )


def test_script_on_a_synthetic_dish_with_a_tiny_model_writes_the_documented_json(tmp_path, tiny_model_dir):
    dish = render_synthetic_dish(
        np.random.default_rng(3), config=SyntheticConfig(height_px=240, width_px=320)
    )
    image = _write_png(tmp_path / "dish.png", dish.rgb)
    mask = _write_png(tmp_path / "dish_mask.png", dish.food_label_mask)
    output = tmp_path / "out" / "volumes.json"
    depth_dir = tmp_path / "depth"

    code = _run_script(
        [
            *("--model", str(tiny_model_dir), str(image), "--masks", str(mask), "--fov-deg", "60"),
            *("--output", str(output), "--save-depth", str(depth_dir)),
        ]
    )

    assert code == 0
    result = json.loads(output.read_text())
    assert result["model"] == str(tiny_model_dir)
    assert result["integrator"] == "heightmap"
    (entry,) = result["images"]
    assert (entry["width"], entry["height"]) == (320, 240)
    assert entry["K_source"] == "flags"
    np.testing.assert_allclose(entry["K"], intrinsics_from_fov(320, 240, 60.0))
    assert len(entry["table_plane"]) == 4
    num_items = len(dish.item_volumes_ml)
    assert [item["label"] for item in entry["items"]] == list(range(1, num_items + 1))
    for item in entry["items"]:
        assert set(item) == {"item", "source", "label", "mask", "volume_ml", "area_px", "mean_height_mm"}
        assert item["area_px"] == int((dish.food_label_mask == item["label"]).sum())
        assert math.isfinite(item["volume_ml"]) and item["volume_ml"] >= 0.0
    depth_png = Path(entry["depth_png"])
    assert depth_png == depth_dir / "dish_depth.png"
    raw = decode_depth_png(depth_png)
    assert raw.shape == (240, 320) and raw.dtype == np.uint16
    # A fresh tiny model's metric head outputs about max_depth / 2 = 0.5 m everywhere.
    saved_m = depth_raw_to_m(raw)
    assert np.all(np.abs(saved_m - 0.5) < 0.1)


def test_bad_inputs_exit_2_with_one_line_naming_the_file(tmp_path, capsys):
    image = _write_png(tmp_path / "photo.png", np.zeros((60, 80, 3), dtype=np.uint8))
    small_mask = _write_png(tmp_path / "small_mask.png", np.ones((30, 40), dtype=np.uint8))
    empty_mask = _write_png(tmp_path / "empty_mask.png", np.zeros((60, 80), dtype=np.uint8))
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    missing = tmp_path / "missing.png"
    cases = [
        ([str(missing)], ["missing.png", "does not exist"]),
        ([str(not_image)], ["notes.png", "not an image"]),
        ([str(image), "--masks", str(small_mask)], ["small_mask.png", "photo.png", "40x30"]),
        ([str(image), "--masks", str(empty_mask)], ["empty_mask.png", "empty"]),
        ([str(image), "--fx", "500"], ["--fx and --fy"]),
        ([str(image), "--fx", "500", "--fy", "500", "--fov-deg", "60"], ["--fov-deg"]),
    ]
    for argv, expected in cases:
        code = _run_script(["--model", str(tmp_path / "never_loaded"), *argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        for fragment in expected:
            assert fragment in lines[0], (fragment, lines[0])


def test_several_images_need_one_mask_each(tmp_path):
    image = _write_png(tmp_path / "a.png", np.zeros((60, 80, 3), dtype=np.uint8))
    mask = _write_png(tmp_path / "m.png", np.ones((60, 80), dtype=np.uint8))
    with pytest.raises(PredictionInputError, match="2 images and 3 masks"):
        predict_volumes([image, image], lambda rgb: np.ones(rgb.shape[:2]), mask_paths=[mask, mask, mask])


@pytest.mark.parametrize("seed", [0, 1])  # a plate, then a bowl
def test_without_masks_items_are_found_in_the_depth_and_measured(tmp_path, seed):
    dish = render_synthetic_dish(np.random.default_rng(seed))
    depth_m = np.where(np.isfinite(dish.depth_clean_m), dish.depth_clean_m, 0.5).astype(np.float32)
    image = _write_png(tmp_path / "dish.png", dish.rgb)

    entry = predict_volumes([image], lambda rgb: depth_m)["images"][0]

    assert [item["source"] for item in entry["items"]] == ["depth_mask"] * len(dish.item_volumes_ml)
    measured = sorted(item["volume_ml"] for item in entry["items"])
    for measured_ml, expected_ml in zip(measured, sorted(dish.item_volumes_ml)):
        assert measured_ml == pytest.approx(expected_ml, rel=0.03)
