"""Ray-cast scenes: hit depths against hand-computed values, closed-form volumes, ids, speed."""

import math
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
    SphericalCap,
    raycast_depth_m,
)
from n5k_hf.geometry.intrinsics import NUTRITION5K_CAMERA_HEIGHT_M, nutrition5k_intrinsics
from n5k_hf.geometry.plane import backproject, height_above_plane_m

K = nutrition5k_intrinsics()
H_M = NUTRITION5K_CAMERA_HEIGHT_M
CENTRE = (240, 320)  # (row, col) of the principal point: the ray straight down


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    return raycast_depth_m(scene, K, 480, 640)


def test_closed_form_volumes():
    # Hand values in cm^3 = mL.
    assert SphericalCap(radius_m=0.05, height_m=0.03).volume_ml == pytest.approx(math.pi * 9 * (15 - 3) / 3)
    assert SphericalCap(radius_m=0.04, height_m=0.04).volume_ml == pytest.approx(2 / 3 * math.pi * 64)
    assert EllipsoidalCap(a_m=0.05, b_m=0.03, c_m=0.02).volume_ml == pytest.approx(2 / 3 * math.pi * 30)
    # A full-height ellipsoidal cap of an ellipsoid with a = b = c is the spherical cap.
    assert EllipsoidalCap(a_m=0.05, b_m=0.05, c_m=0.05, height_m=0.03).volume_ml == pytest.approx(
        36 * math.pi
    )
    assert Box(size_x_m=0.06, size_y_m=0.04, size_z_m=0.03).volume_ml == pytest.approx(72.0)
    assert Cylinder(radius_m=0.03, height_m=0.04).volume_ml == pytest.approx(math.pi * 9 * 4)
    bowl = Bowl(inner_radius_m=0.06, outer_radius_m=0.065, height_m=0.05, floor_thickness_m=0.005)
    assert bowl.volume_ml == pytest.approx(math.pi * (6.5**2 - 36) * 5 + math.pi * 36 * 0.5)


def test_untilted_table_and_centred_cap_depths():
    cap = SphericalCap(radius_m=0.05, height_m=0.03)
    depth_m, object_id = render(Scene((cap,)))
    assert object_id[CENTRE] == 1
    assert depth_m[CENTRE] == pytest.approx(H_M - 0.03, abs=1e-7)
    assert object_id[0, 0] == 0
    assert depth_m[0, 0] == pytest.approx(H_M, abs=1e-7)  # untilted table: Z = camera height everywhere
    # Every cap pixel lies on the sphere of radius 5 cm centred 2 cm below the table.
    points_m = backproject(depth_m, K)[object_id == 1]
    sphere_centre_camera = np.array([0.0, 0.0, H_M + 0.02])
    assert np.abs(np.linalg.norm(points_m - sphere_centre_camera, axis=1) - 0.05).max() < 1e-6


def test_box_top_face_area_in_pixels():
    box = Box(size_x_m=0.06, size_y_m=0.04, size_z_m=0.03)
    depth_m, object_id = render(Scene((box,)))
    top_depth_m = H_M - 0.03
    # Centred: only the top face is visible, at a constant depth; its image is 6 cm x 4 cm at Z.
    np.testing.assert_allclose(depth_m[object_id == 1], top_depth_m, atol=1e-7)
    expected_px = (0.06 * K[0, 0] / top_depth_m) * (0.04 * K[1, 1] / top_depth_m)
    assert (object_id == 1).sum() == pytest.approx(expected_px, rel=0.01)


def test_table_frame_axes_map_to_image():
    # Table x is image right, table y is image up.
    right = Cylinder(radius_m=0.01, height_m=0.02, center_x_m=0.1)
    up = Cylinder(radius_m=0.01, height_m=0.02, center_y_m=0.1)
    depth_m, object_id = render(Scene((right, up)))
    top = np.isclose(depth_m, H_M - 0.02, rtol=0, atol=1e-7)  # the top faces, without side walls
    right_rows, right_cols = np.nonzero(top & (object_id == 1))
    up_rows, up_cols = np.nonzero(top & (object_id == 2))
    assert right_cols.mean() == pytest.approx(320 + 0.1 * K[0, 0] / (H_M - 0.02), abs=1.0)
    assert right_rows.mean() == pytest.approx(240, abs=0.5)
    assert up_cols.mean() == pytest.approx(320, abs=0.5)
    assert up_rows.mean() == pytest.approx(240 - 0.1 * K[1, 1] / (H_M - 0.02), abs=1.0)


@pytest.mark.parametrize(("tilt_deg", "tilt_axis_deg"), [(5.0, 0.0), (5.0, 117.0), (2.5, 240.0)])
def test_tilted_table_pixels_lie_on_the_scene_plane(tilt_deg, tilt_axis_deg):
    scene = Scene((), tilt_deg=tilt_deg, tilt_axis_deg=tilt_axis_deg)
    depth_m, object_id = render(scene)
    assert (object_id == 0).all()
    plane = scene.table_plane()
    assert plane.offset_m == pytest.approx(H_M)
    assert math.degrees(math.acos(-plane.normal[2])) == pytest.approx(tilt_deg)
    heights_m = height_above_plane_m(backproject(depth_m, K), plane)
    assert np.abs(heights_m).max() < 1e-6


def test_off_centre_cylinder_top_on_tilted_table():
    cylinder = Cylinder(radius_m=0.03, height_m=0.04, center_x_m=0.12, center_y_m=-0.03)
    scene = Scene((cylinder,), tilt_deg=4.0, tilt_axis_deg=30.0)
    depth_m, object_id = render(scene)
    top_centre_camera = scene.table_to_camera(np.array([0.12, -0.03, 0.04]))
    u, v = (K @ top_centre_camera)[:2] / top_centre_camera[2]
    row, col = round(v), round(u)
    assert object_id[row, col] == 1
    point_m = backproject(depth_m, K)[row, col]
    assert height_above_plane_m(point_m, scene.table_plane()) == pytest.approx(0.04, abs=1e-6)
    # The side wall facing the camera is visible: heights between 0 and 4 cm inside the object.
    heights_m = height_above_plane_m(backproject(depth_m, K)[object_id == 1], scene.table_plane())
    assert heights_m.min() < 0.005 and heights_m.max() == pytest.approx(0.04, abs=1e-6)


def test_food_on_plate_and_in_bowl():
    plate = Plate(radius_m=0.12, height_m=0.012)
    cap = SphericalCap(radius_m=0.05, height_m=0.03, base_height_m=plate.support_height_m)
    depth_m, object_id = render(Scene((plate, cap)))
    assert object_id[CENTRE] == 2
    assert depth_m[CENTRE] == pytest.approx(H_M - 0.012 - 0.03, abs=1e-7)
    assert object_id[CENTRE[0], 320 + 100] == 1  # plate top around the food
    assert depth_m[CENTRE[0], 320 + 100] == pytest.approx(H_M - 0.012, abs=1e-7)

    bowl = Bowl(inner_radius_m=0.07, outer_radius_m=0.075, height_m=0.06, floor_thickness_m=0.006)
    depth_m, object_id = render(Scene((bowl,)))
    assert object_id[CENTRE] == 1
    assert depth_m[CENTRE] == pytest.approx(H_M - 0.006, abs=1e-7)  # the floor
    rim_col = 320 + round(0.0725 * K[0, 0] / (H_M - 0.06))
    assert depth_m[CENTRE[0], rim_col] == pytest.approx(H_M - 0.06, abs=1e-7)  # the rim
    # Pixels just inside the rim see the inner wall (heights between the floor and the rim).
    inside_col = 320 + round(0.0695 * K[0, 0] / (H_M - 0.06))
    assert H_M - 0.06 < depth_m[CENTRE[0], inside_col] < H_M - 0.006
    scene = Scene((bowl, cap))
    assert scene.food_object_ids() == [2]
    assert scene.food_volume_ml() == pytest.approx(cap.volume_ml)


def test_bounded_table_leaves_no_hit_pixels():
    depth_m, object_id = render(Scene((), table_half_size_m=0.1))
    half_width_px = 0.1 * K[0, 0] / H_M
    assert object_id[CENTRE] == 0
    assert object_id[0, 0] == -1 and np.isnan(depth_m[0, 0])
    assert (object_id == 0).sum() == pytest.approx((2 * half_width_px) ** 2, rel=0.02)


def test_invalid_solids_and_scenes_raise():
    with pytest.raises(ValueError, match="radius_m"):
        SphericalCap(radius_m=-0.01, height_m=0.01)
    with pytest.raises(ValueError, match="diameter"):
        SphericalCap(radius_m=0.01, height_m=0.03)
    with pytest.raises(ValueError, match="inner_radius_m"):
        Bowl(inner_radius_m=0.08, outer_radius_m=0.07, height_m=0.05)
    with pytest.raises(ValueError, match="tilt_deg"):
        Scene((), tilt_deg=60.0)
    with pytest.raises(TypeError, match="solids\\[0\\]"):
        Scene(("cap",))


def test_render_speed_640x480_with_five_solids():
    plate = Plate(radius_m=0.12, height_m=0.012)
    top = plate.support_height_m
    scene = Scene(
        (
            plate,
            SphericalCap(radius_m=0.04, height_m=0.025, center_x_m=0.04, base_height_m=top),
            Box(size_x_m=0.04, size_y_m=0.03, size_z_m=0.02, center_x_m=-0.05, yaw_deg=30, base_height_m=top),
            EllipsoidalCap(a_m=0.03, b_m=0.02, c_m=0.02, center_y_m=0.07, base_height_m=top),
            Cylinder(radius_m=0.03, height_m=0.05, center_x_m=0.18),
        ),
        tilt_deg=3.0,
    )
    timings_s = []
    for _ in range(3):
        start = time.perf_counter()
        render(scene)
        timings_s.append(time.perf_counter() - start)
    assert min(timings_s) < 0.2
