"""NaN, +/-inf, negative and zero depths are invalid readings everywhere: never a crash, never NaN mL."""

from __future__ import annotations

import numpy as np
import pytest

from n5k_hf.data.scenes import Scene, SphericalCap, raycast_depth_m
from n5k_hf.geometry import integrate_volume_ml, nutrition5k_intrinsics
from n5k_hf.geometry.depth import depth_m_to_raw


@pytest.mark.parametrize("method", ["heightmap", "column", "frustum"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf, -0.2, 0.0])
def test_bad_values_inside_and_around_the_food_are_treated_as_missing(method, bad_value):
    K = nutrition5k_intrinsics()
    scene = Scene([SphericalCap(radius_m=0.05, height_m=0.03)])
    depth_m, object_id = raycast_depth_m(scene, K, 480, 640)
    food = object_id >= 1
    clean = integrate_volume_ml(depth_m, food, K, method=method)
    spoiled = depth_m.copy()
    rng = np.random.default_rng(0)
    spoiled[rng.random(spoiled.shape) < 0.05] = bad_value
    volume = integrate_volume_ml(spoiled, food, K, method=method)
    assert np.isfinite(volume) and volume >= 0
    assert volume == pytest.approx(clean, rel=0.02)
    assert clean == pytest.approx(scene.food_volume_ml(), rel=0.02 if method != "column" else 0.12)


def test_a_mask_without_any_valid_depth_measures_zero_not_nan():
    K = nutrition5k_intrinsics()
    depth_m = np.full((480, 640), 0.359, np.float32)
    food = np.zeros((480, 640), bool)
    food[200:260, 300:360] = True
    depth_m[food] = np.inf
    assert integrate_volume_ml(depth_m, food, K) == 0.0


def test_bad_values_never_reach_the_stored_png():
    raw = depth_m_to_raw(np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, 0.3591], dtype=np.float32))
    assert raw.dtype == np.uint16
    assert raw.tolist() == [0, 0, 0, 0, 0, 3591]
