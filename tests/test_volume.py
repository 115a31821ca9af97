"""Volume integration on ray-cast scenes with analytic volumes.

Every scene is rendered with `raycast_depth_m`, 5% of the pixels are set to NaN at random, and the
plane is fitted on the ring around the mask (as in real use) unless a test says otherwise.
"""

import dataclasses
import time

import numpy as np
import pytest

from n5k_hf.data.scenes import (
    Bowl,
    Box,
    Cylinder,
    EllipsoidalCap,
    Plate,
    Scene,
    Solid,
    SphericalCap,
    raycast_depth_m,
)
from n5k_hf.geometry.intrinsics import nutrition5k_intrinsics
from n5k_hf.geometry.volume import (
    VOLUME_METHODS,
    fill_invalid_depth,
    integrate_volume_ml,
    measure_food_item,
)

K = nutrition5k_intrinsics()

# All >= 20 mL. Caps with a contact angle <= 65 degrees; the boxes are yawed off the pixel rows.
ACCURACY_SOLIDS = {
    "cap_r50_h30": SphericalCap(radius_m=0.05, height_m=0.03),
    "cap_r80_h20": SphericalCap(radius_m=0.08, height_m=0.02),
    "cap_r35_h20": SphericalCap(radius_m=0.035, height_m=0.02),
    "ellipsoidal_cap": EllipsoidalCap(a_m=0.05, b_m=0.035, c_m=0.04, height_m=0.025, yaw_deg=25),
    "flat_half_ellipsoid": EllipsoidalCap(a_m=0.06, b_m=0.04, c_m=0.02, yaw_deg=60),
    "box": Box(size_x_m=0.06, size_y_m=0.04, size_z_m=0.03, yaw_deg=20),
    "small_box": Box(size_x_m=0.04, size_y_m=0.03, size_z_m=0.02, yaw_deg=15),
    "flat_box": Box(size_x_m=0.07, size_y_m=0.06, size_z_m=0.015, yaw_deg=45),
    "cylinder": Cylinder(radius_m=0.035, height_m=0.04),
    "small_cylinder": Cylinder(radius_m=0.025, height_m=0.02),
}
POSITIONS_M = {"centre": (0.0, 0.0), "off_x_12cm": (0.12, 0.0), "off_diagonal_12cm": (0.085, -0.085)}
TILTS = {"flat": (0.0, 0.0), "tilt5_axis37": (5.0, 37.0), "tilt5_axis200": (5.0, 200.0)}


def render_solid(
    solid: Solid, position_m=(0.0, 0.0), tilt=(0.0, 0.0), invalid_fraction=0.05, seed=0
) -> tuple[np.ndarray, np.ndarray, Scene, Solid]:
    placed = dataclasses.replace(solid, center_x_m=position_m[0], center_y_m=position_m[1])
    scene = Scene((placed,), tilt_deg=tilt[0], tilt_axis_deg=tilt[1])
    depth_m, object_id = raycast_depth_m(scene, K, 480, 640)
    mask = object_id == 1
    rows, cols = np.nonzero(mask)
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < 479 and cols.max() < 639, (
        "object leaves the image"
    )
    depth_m[np.random.default_rng(seed).random(depth_m.shape) < invalid_fraction] = np.nan
    return depth_m, mask, scene, placed


def relative_error(volume_ml: float, solid: Solid) -> float:
    return volume_ml / solid.volume_ml - 1.0


@pytest.mark.parametrize("tilt", TILTS.values(), ids=TILTS.keys())
@pytest.mark.parametrize("position_m", POSITIONS_M.values(), ids=POSITIONS_M.keys())
@pytest.mark.parametrize("solid", ACCURACY_SOLIDS.values(), ids=ACCURACY_SOLIDS.keys())
def test_heightmap_within_two_percent(solid, position_m, tilt):
    assert solid.volume_ml >= 20.0
    depth_m, mask, _, placed = render_solid(solid, position_m, tilt)
    error = relative_error(integrate_volume_ml(depth_m, mask, K), placed)
    assert abs(error) < 0.02, f"heightmap error {error:+.2%}"


@pytest.mark.parametrize("position_m", POSITIONS_M.values(), ids=POSITIONS_M.keys())
def test_column_bias_and_frustum_exactness_on_caps(position_m):
    # Measured on these caps: column -6% to -9%, frustum within 0.1%.
    for solid in (SphericalCap(radius_m=0.05, height_m=0.03), SphericalCap(radius_m=0.04, height_m=0.035)):
        depth_m, mask, _, placed = render_solid(solid, position_m, tilt=(0.0, 0.0))
        column_error = relative_error(integrate_volume_ml(depth_m, mask, K, "column"), placed)
        frustum_error = relative_error(integrate_volume_ml(depth_m, mask, K, "frustum"), placed)
        assert -0.10 < column_error < -0.04
        assert abs(frustum_error) < 0.01


def test_column_and_frustum_on_boxes():
    box = Box(size_x_m=0.06, size_y_m=0.04, size_z_m=0.03)
    # Centred: only the flat top is seen, so columns are exact up to the mask's pixel quantisation
    # (the top is 84.8 x 56.5 px; measured +1.0%); the frustum also counts the table hidden under the
    # box's edges.
    depth_m, mask, _, placed = render_solid(box)
    assert abs(relative_error(integrate_volume_ml(depth_m, mask, K, "column"), placed)) < 0.015
    assert 0.08 < relative_error(integrate_volume_ml(depth_m, mask, K, "frustum"), placed) < 0.11
    # 12 cm off centre the side wall facing the camera counts as columns (measured +8.4%).
    depth_m, mask, _, placed = render_solid(box, (0.12, 0.0))
    assert 0.05 < relative_error(integrate_volume_ml(depth_m, mask, K, "column"), placed) < 0.12
    assert 0.15 < relative_error(integrate_volume_ml(depth_m, mask, K, "frustum"), placed) < 0.22


def test_box_edges_along_the_pixel_rows_are_known_to_half_a_pixel():
    # Edges parallel to the pixel grid fall at one sub-pixel phase along their whole length, so the
    # mask cannot place them better than half a pixel: this box 12 cm off centre measures +1.3%,
    # and +0.1% once yawed by 3 degrees (the phases then average out).
    box = Box(size_x_m=0.06, size_y_m=0.04, size_z_m=0.03, center_x_m=0.12)
    scene = Scene((box,))
    depth_m, object_id = raycast_depth_m(scene, K, 480, 640)
    aligned_error = relative_error(integrate_volume_ml(depth_m, object_id == 1, K), box)
    assert 0.005 < aligned_error < 0.02
    yawed = dataclasses.replace(box, yaw_deg=3.0)
    depth_m, object_id = raycast_depth_m(Scene((yawed,)), K, 480, 640)
    assert abs(relative_error(integrate_volume_ml(depth_m, object_id == 1, K), yawed)) < 0.005


def test_steep_mounds_lose_what_the_camera_cannot_see():
    # A hemisphere 12 cm off centre hides 1.9% of its volume (columns whose top is not visible);
    # centred it hides nothing.
    hemisphere = SphericalCap(radius_m=0.04, height_m=0.04)
    depth_m, mask, _, placed = render_solid(hemisphere)
    assert abs(relative_error(integrate_volume_ml(depth_m, mask, K), placed)) < 0.01
    depth_m, mask, _, placed = render_solid(hemisphere, (0.12, 0.0))
    assert -0.045 < relative_error(integrate_volume_ml(depth_m, mask, K), placed) < -0.015
    # The frustum sees through: it over-counts the hidden wedge slightly instead (measured +1.1%).
    assert 0.0 < relative_error(integrate_volume_ml(depth_m, mask, K, "frustum"), placed) < 0.02


def test_food_on_a_plate_is_measured_from_the_plate_top():
    plate = Plate(radius_m=0.12, height_m=0.012, center_x_m=0.02)
    top = plate.support_height_m
    foods = (
        SphericalCap(radius_m=0.045, height_m=0.025, center_x_m=-0.03, center_y_m=0.03, base_height_m=top),
        Box(
            size_x_m=0.05,
            size_y_m=0.035,
            size_z_m=0.025,
            center_x_m=0.06,
            center_y_m=-0.02,
            yaw_deg=30,
            base_height_m=top,
        ),
        EllipsoidalCap(a_m=0.03, b_m=0.02, c_m=0.02, center_x_m=-0.02, center_y_m=-0.06, base_height_m=top),
    )
    scene = Scene((plate, *foods), tilt_deg=3.0, tilt_axis_deg=100.0)
    depth_m, object_id = raycast_depth_m(scene, K, 480, 640)
    depth_m[np.random.default_rng(1).random(depth_m.shape) < 0.05] = np.nan
    mask = np.isin(object_id, scene.food_object_ids())
    # The ring around the food lies on the plate, so the fitted plane is the plate top.
    total_ml = integrate_volume_ml(depth_m, mask, K)
    assert total_ml == pytest.approx(scene.food_volume_ml(), rel=0.02)
    for food_id, food in zip(scene.food_object_ids(), foods):
        item_ml = integrate_volume_ml(depth_m, object_id == food_id, K)
        assert item_ml == pytest.approx(food.volume_ml, rel=0.02)


def test_food_in_a_bowl_is_measured_from_the_bowl_floor():
    bowl = Bowl(inner_radius_m=0.075, outer_radius_m=0.08, height_m=0.05, floor_thickness_m=0.006)
    food = SphericalCap(radius_m=0.05, height_m=0.025, center_x_m=0.01, base_height_m=bowl.support_height_m)
    scene = Scene((bowl, food))
    depth_m, object_id = raycast_depth_m(scene, K, 480, 640)
    volume_ml = integrate_volume_ml(depth_m, object_id == 2, K)
    assert volume_ml == pytest.approx(food.volume_ml, rel=0.02)


def test_invalid_pixels_are_filled_not_counted_as_zero():
    box = Box(size_x_m=0.06, size_y_m=0.04, size_z_m=0.03, yaw_deg=20)
    clean_m, mask, scene, placed = render_solid(box, invalid_fraction=0.0)
    plane = scene.table_plane()
    holed_m = clean_m.copy()
    holed_m[232:248, 305:335] = np.nan  # a 16 x 30 px blob in the middle of the top face
    holed_m[np.random.default_rng(2).random(holed_m.shape) < 0.2] = 0.0  # 20% zeros (no reading)
    filled_m = fill_invalid_depth(holed_m, mask)
    assert np.isfinite(filled_m[mask]).all() and (filled_m[mask] > 0).all()
    assert mask[232:248, 305:335].all()
    np.testing.assert_allclose(filled_m[240, 320], clean_m[240, 320], atol=1e-6)  # the flat top
    for method in VOLUME_METHODS:
        clean_ml = integrate_volume_ml(clean_m, mask, K, method, plane=plane)
        assert integrate_volume_ml(holed_m, mask, K, method, plane=plane) == pytest.approx(clean_ml, rel=0.01)
    assert integrate_volume_ml(holed_m, mask, K, plane=plane) == pytest.approx(placed.volume_ml, rel=0.02)


def test_interior_mask_hole_is_filled():
    cylinder = Cylinder(radius_m=0.04, height_m=0.03)
    depth_m, mask, scene, placed = render_solid(cylinder, invalid_fraction=0.0)
    holed_mask = mask.copy()
    holed_mask[230:250, 310:330] = False  # e.g. a segmentation hole in the middle of the food
    volume_ml = integrate_volume_ml(depth_m, holed_mask, K, plane=scene.table_plane())
    assert volume_ml == pytest.approx(placed.volume_ml, rel=0.01)


def test_measure_food_item():
    box = Box(size_x_m=0.06, size_y_m=0.04, size_z_m=0.03)
    depth_m, mask, scene, placed = render_solid(box, invalid_fraction=0.0)
    item = measure_food_item(depth_m, mask, K, scene.table_plane())
    assert item.area_px == int(mask.sum())
    assert item.mean_height_mm == pytest.approx(30.0, abs=1e-3)  # centred: only the 3 cm top is seen
    assert item.volume_ml == pytest.approx(placed.volume_ml, rel=0.01)
    column = measure_food_item(depth_m, mask, K, scene.table_plane(), method="column")
    assert column.volume_ml == pytest.approx(72.0, rel=0.015)


def test_degenerate_inputs_give_zero_or_clear_errors():
    depth_m, mask, scene, _ = render_solid(Box(size_x_m=0.05, size_y_m=0.05, size_z_m=0.02))
    plane = scene.table_plane()
    assert integrate_volume_ml(depth_m, np.zeros_like(mask), K) == 0.0
    all_invalid = np.where(mask, np.nan, depth_m)
    assert integrate_volume_ml(all_invalid, mask, K, plane=plane) == 0.0
    with pytest.raises(ValueError, match="column, frustum, heightmap"):
        integrate_volume_ml(depth_m, mask, K, method="voxels")
    with pytest.raises(ValueError, match="mask shape"):
        integrate_volume_ml(depth_m, mask[:10], K)
    with pytest.raises(TypeError, match="bool"):
        integrate_volume_ml(depth_m, mask.astype(np.uint8), K)
    with pytest.raises(ValueError, match="cell_size_m"):
        integrate_volume_ml(depth_m, mask, K, cell_size_m=0.0)
    assert sorted(VOLUME_METHODS) == ["column", "frustum", "heightmap"]


def test_heightmap_speed_on_640x480():
    plate = Plate(radius_m=0.12, height_m=0.012)
    top = plate.support_height_m
    scene = Scene(
        (
            plate,
            SphericalCap(radius_m=0.05, height_m=0.03, center_x_m=0.03, base_height_m=top),
            Box(size_x_m=0.05, size_y_m=0.04, size_z_m=0.03, center_x_m=-0.06, yaw_deg=30, base_height_m=top),
        ),
        tilt_deg=3.0,
    )
    depth_m, object_id = raycast_depth_m(scene, K, 480, 640)
    mask = np.isin(object_id, scene.food_object_ids())
    plane = scene.table_plane()
    timings_s = []
    for _ in range(7):
        start = time.perf_counter()
        integrate_volume_ml(depth_m, mask, K, plane=plane)
        timings_s.append(time.perf_counter() - start)
    # About 6 ms on one free core (scripts/benchmark_geometry.py); the brief's budget is 20 ms.
    assert min(timings_s) < 0.02
