"""Food masks: external label images and the depth fallback (analytic scenes and synthetic dishes)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from n5k_hf.data.masks import (
    DepthMaskConfig,
    MaskFileError,
    depth_food_mask,
    fill_holes,
    label_items,
    load_external_mask,
    remove_small_components,
)
from n5k_hf.data.scenes import Bowl, Box, Plate, Scene, SphericalCap, raycast_depth_m
from n5k_hf.data.synthetic import render_synthetic_dish
from n5k_hf.geometry.depth import depth_raw_to_m
from n5k_hf.geometry.intrinsics import nutrition5k_intrinsics
from n5k_hf.geometry.volume import integrate_volume_ml

K = nutrition5k_intrinsics()
HEIGHT, WIDTH = 480, 640


def iou(first: np.ndarray, second: np.ndarray) -> float:
    return float((first & second).sum() / max((first | second).sum(), 1))


def render(*solids, tilt_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) exact depth in metres and (H, W) object ids (0 table, 1.. solids) of a table-top scene."""
    return raycast_depth_m(Scene(solids=solids, tilt_deg=tilt_deg, tilt_axis_deg=30.0), K, HEIGHT, WIDTH)


# --- external masks ------------------------------------------------------------------------------


def test_external_mask_labels_follow_the_values_of_the_file(tmp_path: Path) -> None:
    image = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    image[10:20, 10:20] = 7
    image[100:150, 200:260] = 3
    path = tmp_path / "dish_1.png"
    cv2.imwrite(str(path), image)
    labels = load_external_mask(path, (HEIGHT, WIDTH))
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels == 1).sum() == 50 * 60  # value 3 -> item 1
    assert (labels == 2).sum() == 10 * 10  # value 7 -> item 2
    assert (labels[image == 0] == 0).all()


def test_external_mask_binary_16bit_and_colour_files(tmp_path: Path) -> None:
    binary = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    binary[5:9, 5:10] = 255
    cv2.imwrite(str(tmp_path / "binary.png"), binary)
    assert (load_external_mask(tmp_path / "binary.png", (HEIGHT, WIDTH)) == (binary > 0)).all()

    sixteen = np.zeros((HEIGHT, WIDTH), dtype=np.uint16)
    sixteen[0:2, 0:3] = 1000
    sixteen[50:52, 0:3] = 65535
    cv2.imwrite(str(tmp_path / "sixteen.png"), sixteen)
    labels = load_external_mask(tmp_path / "sixteen.png", (HEIGHT, WIDTH))
    assert labels[0, 0] == 1 and labels[50, 0] == 2 and (labels > 0).sum() == 12

    colour = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    colour[0:4, 0:4] = (255, 0, 0)
    colour[10:12, 0:4] = (0, 0, 255)
    colour[20:21, 0:4] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    labels = load_external_mask(tmp_path / "colour.png", (HEIGHT, WIDTH))
    assert len(np.unique(labels)) == 3  # background + two colours (one item in two pieces)
    assert labels[10, 0] == labels[20, 0] != labels[0, 0]
    assert (labels > 0).sum() == 16 + 8 + 4


def test_external_mask_without_background_keeps_every_pixel_food(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "full.png"), np.full((HEIGHT, WIDTH), 9, dtype=np.uint8))
    assert (load_external_mask(tmp_path / "full.png", (HEIGHT, WIDTH)) == 1).all()


def test_external_mask_errors_name_the_file(tmp_path: Path) -> None:
    small = tmp_path / "dish_small.png"
    cv2.imwrite(str(small), np.ones((360, 640), dtype=np.uint8))
    with pytest.raises(MaskFileError, match=r"dish_small\.png: 640x360 \(WxH\), expected 640x480") as info:
        load_external_mask(small, (HEIGHT, WIDTH))
    assert info.value.reason == "bad_shape"

    empty = tmp_path / "dish_empty.png"
    empty.write_bytes(b"")
    with pytest.raises(MaskFileError, match=r"dish_empty\.png: empty") as info:
        load_external_mask(empty, (HEIGHT, WIDTH))
    assert info.value.reason == "empty_file"

    garbage = tmp_path / "dish_garbage.png"
    garbage.write_bytes(b"not a png at all")
    with pytest.raises(MaskFileError, match=r"dish_garbage\.png: not an image") as info:
        load_external_mask(garbage, (HEIGHT, WIDTH))
    assert info.value.reason == "decode_error"

    with pytest.raises(FileNotFoundError):
        load_external_mask(tmp_path / "missing.png", (HEIGHT, WIDTH))

    many = tmp_path / "dish_many.png"
    cv2.imwrite(str(many), np.arange(HEIGHT * WIDTH, dtype=np.uint16).reshape(HEIGHT, WIDTH) % 300)
    with pytest.raises(MaskFileError, match=r"dish_many\.png: 299 distinct non-zero values; at most 255"):
        load_external_mask(many, (HEIGHT, WIDTH))


# --- mask helpers --------------------------------------------------------------------------------


def test_fill_holes_remove_small_components_and_label_items() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:10, 2:10] = True
    mask[4:6, 4:6] = False  # a hole
    mask[15:17, 20:22] = True  # 4 px piece
    mask[0:3, 25:30] = True  # touches the border: the region under it is not a hole
    filled = fill_holes(mask)
    assert filled[4:6, 4:6].all() and filled.sum() == mask.sum() + 4
    kept = remove_small_components(filled, 10)
    assert not kept[15:17, 20:22].any() and kept[2:10, 2:10].all() and kept[0:3, 25:30].all()
    labels = label_items(filled)
    assert labels[3, 3] == 1 and labels[0, 25] == 2 and labels[15, 20] == 3  # by area: 64, 15, 4 px


# --- depth fallback on analytic scenes ------------------------------------------------------------


def test_depth_mask_keeps_the_plate_out_and_finds_the_food() -> None:
    plate = Plate(radius_m=0.12, height_m=0.012)
    top = plate.support_height_m
    cap = SphericalCap(radius_m=0.05, height_m=0.03, center_x_m=-0.03, center_y_m=0.02, base_height_m=top)
    box = Box(0.04, 0.03, 0.02, center_x_m=0.05, center_y_m=-0.04, base_height_m=top, yaw_deg=20.0)
    depth_m, object_id = render(plate, cap, box, tilt_deg=2.0)
    food_truth = object_id >= 2
    mask = depth_food_mask(depth_m, K)
    assert iou(mask, food_truth) > 0.97
    assert (mask & (object_id == 1)).sum() < 0.01 * mask.sum()  # plate edge pixels at most
    assert not (mask & (object_id == 0)).any()
    volume_ml = integrate_volume_ml(depth_m, mask, K)
    assert volume_ml == pytest.approx(cap.volume_ml + box.volume_ml, rel=0.03)


def test_depth_mask_keeps_the_bowl_wall_out() -> None:
    bowl = Bowl(inner_radius_m=0.1, outer_radius_m=0.107, height_m=0.045, floor_thickness_m=0.006)
    cap = SphericalCap(radius_m=0.06, height_m=0.025, base_height_m=bowl.support_height_m)
    depth_m, object_id = render(bowl, cap)
    mask = depth_food_mask(depth_m, K)
    # the food's foot below the 2.5 mm threshold (a ~2 px ring around the cap) is missed
    assert iou(mask, object_id == 2) > 0.95
    assert (mask & (object_id == 1)).sum() < 0.01 * mask.sum()
    # the wall stands 39 mm above the floor, higher than the food: it must not enter the mask
    wall = (object_id == 1) & (depth_m < np.nanmedian(depth_m[object_id == 1]) - 0.02)
    assert wall.sum() > 1000 and not (mask & wall).any()


def test_depth_mask_of_food_directly_on_the_table() -> None:
    cap = SphericalCap(radius_m=0.06, height_m=0.03)
    depth_m, object_id = render(cap)
    mask = depth_food_mask(depth_m, K)
    assert iou(mask, object_id == 1) > 0.97


def test_depth_mask_of_an_empty_plate_is_empty_even_with_correlated_noise() -> None:
    depth_m, _ = render(Plate(radius_m=0.12, height_m=0.01))
    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.standard_normal(depth_m.shape), (0, 0), 3.0)
    noisy_m = (depth_m + 1e-3 * noise / noise.std()).astype(np.float32)  # 1 mm, like the D435
    assert not depth_food_mask(depth_m, K).any()
    assert not depth_food_mask(noisy_m, K).any()


def test_depth_mask_covers_dropouts_on_dark_food() -> None:
    plate = Plate(radius_m=0.12, height_m=0.01)
    cap = SphericalCap(radius_m=0.06, height_m=0.03, base_height_m=plate.support_height_m)
    depth_m, object_id = render(plate, cap)
    rng = np.random.default_rng(0)
    holes = (object_id == 2) & (rng.random(depth_m.shape) < 0.3)
    depth_m[holes] = np.nan  # 30% of the food pixels without a reading
    mask = depth_food_mask(depth_m, K)
    interior = cv2.erode((object_id == 2).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert mask[holes & interior].all()
    assert iou(mask, object_id == 2) > 0.95


def test_depth_mask_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="height_threshold_m must be positive"):
        DepthMaskConfig(height_threshold_m=0.0)
    with pytest.raises(ValueError, match="closing_px must be >= 0"):
        DepthMaskConfig(closing_px=-1)
    assert DepthMaskConfig().as_dict()["height_threshold_m"] == 0.0025


# --- depth fallback on synthetic dishes -----------------------------------------------------------


def measure_fallback(num_dishes: int, first_seed: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """IoU with the true food mask and relative volume error vs the analytic volume, per dish."""
    ious, errors = [], []
    for index in range(num_dishes):
        dish = render_synthetic_dish(np.random.default_rng(first_seed + index))
        depth_m = depth_raw_to_m(dish.depth_raw)
        mask = depth_food_mask(depth_m, dish.K)
        ious.append(iou(mask, dish.food_mask))
        volume_ml = integrate_volume_ml(depth_m, mask, dish.K) if mask.any() else 0.0
        errors.append(volume_ml / dish.volume_ml - 1.0)
    return np.array(ious), np.array(errors)


def check_fallback(num_dishes: int) -> None:
    ious, errors = measure_fallback(num_dishes)
    print(
        f"\ndepth fallback on {num_dishes} synthetic dishes: IoU median {np.median(ious):.3f} "
        f"(10th percentile {np.percentile(ious, 10):.3f}); volume error median {np.median(errors):+.3f}, "
        f"median |error| {np.median(np.abs(errors)):.3f}, 90th percentile |error| "
        f"{np.percentile(np.abs(errors), 90):.3f}"
    )
    assert np.median(ious) >= 0.8
    assert np.median(np.abs(errors)) <= 0.10


def test_depth_mask_on_synthetic_dishes() -> None:
    check_fallback(24)


@pytest.mark.slow
def test_depth_mask_on_200_synthetic_dishes() -> None:
    check_fallback(200)
