"""Property tests: volumes are finite and >= 0 for any plane, mask and invalid pattern, and a scene's
volume does not depend on flipping or rotating the image (with K updated).

Scenes are ray-cast at 320x240 (the Nutrition5k K scaled) to keep each example fast.
"""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from n5k_hf.data.scenes import Box, Cylinder, EllipsoidalCap, Scene, SphericalCap, raycast_depth_m
from n5k_hf.geometry.intrinsics import (
    hflip_intrinsics,
    nutrition5k_intrinsics,
    rot90_intrinsics,
    vflip_intrinsics,
)
from n5k_hf.geometry.plane import Plane
from n5k_hf.geometry.volume import VOLUME_METHODS, integrate_volume_ml

HEIGHT, WIDTH = 240, 320
K = nutrition5k_intrinsics(WIDTH, HEIGHT)
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def food_solids(draw):
    """One solid of 30-300 mL, up to 8 cm off centre."""
    kind = draw(st.sampled_from(["cap", "ellipsoidal_cap", "box", "cylinder"]))
    radius_m = draw(st.floats(0.06, 0.08))
    angle = draw(st.floats(0.0, 2 * math.pi))
    centre = {"center_x_m": radius_m * math.cos(angle), "center_y_m": radius_m * math.sin(angle)}
    centre = {key: value * draw(st.floats(0.0, 1.0)) for key, value in centre.items()}
    # Box edges along the pixel rows are only placed to half a pixel (tests/test_volume.py measures
    # that limit); keep them >= 10 degrees off so the 3% accuracy check below holds at 1.5 mm pixels.
    yaw_deg = draw(st.floats(10.0, 80.0)) + 90.0 * draw(st.integers(0, 1))
    if kind == "cap":
        radius = draw(st.floats(0.035, 0.055))
        return SphericalCap(radius_m=radius, height_m=draw(st.floats(0.3, 0.6)) * radius, **centre)
    if kind == "ellipsoidal_cap":
        a_m, b_m = draw(st.floats(0.035, 0.05)), draw(st.floats(0.03, 0.045))
        c_m = draw(st.floats(0.02, 0.03))
        return EllipsoidalCap(
            a_m=a_m, b_m=b_m, c_m=c_m, height_m=draw(st.floats(0.5, 0.8)) * c_m, yaw_deg=yaw_deg, **centre
        )
    if kind == "box":
        sizes = [draw(st.floats(0.035, 0.06)), draw(st.floats(0.03, 0.05)), draw(st.floats(0.02, 0.035))]
        return Box(size_x_m=sizes[0], size_y_m=sizes[1], size_z_m=sizes[2], yaw_deg=yaw_deg, **centre)
    return Cylinder(radius_m=draw(st.floats(0.025, 0.04)), height_m=draw(st.floats(0.02, 0.04)), **centre)


@st.composite
def scenes(draw):
    return Scene(
        (draw(food_solids()),),
        tilt_deg=draw(st.floats(0.0, 5.0)),
        tilt_axis_deg=draw(st.floats(0.0, 360.0)),
    )


def with_invalid_pixels(depth_m: np.ndarray, fraction: float, seed: int, zeros: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    holed = depth_m.copy()
    holed[rng.random(depth_m.shape) < fraction] = 0.0 if zeros else np.nan
    return holed


@st.composite
def masks(draw, object_mask: np.ndarray):
    """The object mask, a random rectangle, their union, or the object mask with a rectangle cut out."""
    top, left = draw(st.integers(0, HEIGHT - 2)), draw(st.integers(0, WIDTH - 2))
    bottom, right = draw(st.integers(top + 1, HEIGHT)), draw(st.integers(left + 1, WIDTH))
    rectangle = np.zeros_like(object_mask)
    rectangle[top:bottom, left:right] = True
    choice = draw(st.sampled_from(["object", "rectangle", "union", "cut"]))
    return {
        "object": object_mask,
        "rectangle": rectangle,
        "union": object_mask | rectangle,
        "cut": object_mask & ~rectangle,
    }[choice]


@st.composite
def planes(draw):
    """A plane 0.2-0.5 m from the camera, tilted up to 30 degrees from facing it."""
    polar = math.radians(draw(st.floats(0.0, 30.0)))
    azimuth = draw(st.floats(0.0, 2 * math.pi))
    normal = np.array(
        [math.sin(polar) * math.cos(azimuth), math.sin(polar) * math.sin(azimuth), -math.cos(polar)]
    )
    return Plane(normal, draw(st.floats(0.2, 0.5)))


@PROPERTY_SETTINGS
@given(scene=scenes(), data=st.data())
def test_volume_is_finite_and_non_negative(scene, data):
    depth_m, object_id = raycast_depth_m(scene, K, HEIGHT, WIDTH)
    mask = data.draw(masks(object_id == 1))
    depth_m = with_invalid_pixels(
        depth_m, data.draw(st.floats(0.0, 0.9)), data.draw(st.integers(0, 2**16)), data.draw(st.booleans())
    )
    plane = data.draw(st.one_of(planes(), st.none()))  # None: fitted on the ring around the mask
    cell_size_m = data.draw(st.sampled_from([5e-4, 1e-3, 3e-3]))
    for method in VOLUME_METHODS:
        try:
            volume_ml = integrate_volume_ml(depth_m, mask, K, method, plane=plane, cell_size_m=cell_size_m)
        except ValueError as error:  # a mask that leaves no table around it must say so
            assert plane is None and "valid table pixels" in str(error)
            continue
        assert isinstance(volume_ml, float)
        assert math.isfinite(volume_ml) and volume_ml >= 0.0, (method, volume_ml)


def transformed(depth_m: np.ndarray, mask: np.ndarray, operation: str):
    """Depth, mask and K after an image operation."""
    if operation == "hflip":
        return depth_m[:, ::-1], mask[:, ::-1], hflip_intrinsics(K, WIDTH)
    if operation == "vflip":
        return depth_m[::-1], mask[::-1], vflip_intrinsics(K, HEIGHT)
    k = int(operation[-1])
    return np.rot90(depth_m, k), np.rot90(mask, k), rot90_intrinsics(K, k, HEIGHT, WIDTH)


@PROPERTY_SETTINGS
@given(
    scene=scenes(),
    operation=st.sampled_from(["hflip", "vflip", "rot90_1", "rot90_2", "rot90_3"]),
    invalid_fraction=st.floats(0.0, 0.1),
    seed=st.integers(0, 2**16),
)
def test_volume_is_invariant_to_flips_and_rotations(scene, operation, invalid_fraction, seed):
    depth_m, object_id = raycast_depth_m(scene, K, HEIGHT, WIDTH)
    mask = object_id == 1
    depth_m = with_invalid_pixels(depth_m, invalid_fraction, seed, zeros=False)
    new_depth_m, new_mask, new_K = transformed(depth_m, mask, operation)
    new_depth_m, new_mask = np.ascontiguousarray(new_depth_m), np.ascontiguousarray(new_mask)
    volumes_ml = {}
    for method in VOLUME_METHODS:
        volumes_ml[method] = integrate_volume_ml(depth_m, mask, K, method)
        new_volume_ml = integrate_volume_ml(new_depth_m, new_mask, new_K, method)
        assert abs(new_volume_ml / volumes_ml[method] - 1.0) < 0.01, (
            method,
            volumes_ml[method],
            new_volume_ml,
        )
    # And the heightmap stays accurate at this resolution (1.5 mm pixels; 300 examples: worst 1.0%).
    assert abs(volumes_ml["heightmap"] / scene.solids[0].volume_ml - 1.0) < 0.02
