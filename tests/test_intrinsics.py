"""Camera matrices: Nutrition5k values, and K updates that keep projection exact under image ops.

Each image-op test paints marker pixels where known 3-D points project, applies the op to the image,
and checks that the markers sit exactly where the updated K (and the matching camera-frame map)
projects the same points.
"""

import math

import numpy as np
import pytest

from n5k_hf.geometry.intrinsics import (
    NUTRITION5K_CAMERA_HEIGHT_M,
    NUTRITION5K_FOCAL_PX,
    NUTRITION5K_IMAGE_HW,
    crop_intrinsics,
    hflip_camera_matrix,
    hflip_intrinsics,
    intrinsics_from_35mm_focal,
    intrinsics_from_fov,
    make_intrinsics,
    nutrition5k_intrinsics,
    project_points,
    resize_intrinsics,
    rot90_camera_matrix,
    rot90_intrinsics,
    vflip_camera_matrix,
    vflip_intrinsics,
)

HEIGHT, WIDTH = 48, 64
K_TEST = make_intrinsics(fx_px=52.5, fy_px=47.25, cx_px=30.0, cy_px=21.0)


def points_at_pixels(K: np.ndarray, count: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points (count, 3) at random depths whose projections are distinct integer pixels (count, 2)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(HEIGHT * WIDTH, size=count, replace=False)
    pixels = np.stack([flat % WIDTH, flat // WIDTH], axis=1).astype(np.float64)
    depths_m = rng.uniform(0.2, 0.6, size=count)
    rays = np.concatenate([pixels, np.ones((count, 1))], axis=1) @ np.linalg.inv(K).T
    return rays * depths_m[:, None], pixels


def marker_image(pixels: np.ndarray) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    image[pixels[:, 1].astype(int), pixels[:, 0].astype(int)] = np.arange(1, len(pixels) + 1)
    return image


def marker_centroids(image: np.ndarray, count: int) -> np.ndarray:
    """(count, 2) mean (u, v) of the pixels holding each marker id; NaN for a marker that is gone."""
    rows, cols = np.nonzero(image)
    ids = image[rows, cols]
    centroids = np.full((count, 2), np.nan)
    for marker in range(1, count + 1):
        if (ids == marker).any():
            centroids[marker - 1] = cols[ids == marker].mean(), rows[ids == marker].mean()
    return centroids


def test_nutrition5k_intrinsics_values():
    K = nutrition5k_intrinsics()
    np.testing.assert_array_equal(K, [[465.14, 0, 320], [0, 465.14, 240], [0, 0, 1]])
    assert K.dtype == np.float64
    assert NUTRITION5K_IMAGE_HW == (480, 640)
    # The paper's 5.957e-3 cm^2 per pixel at 35.9 cm.
    pixel_area_cm2 = NUTRITION5K_CAMERA_HEIGHT_M**2 / NUTRITION5K_FOCAL_PX**2 * 1e4
    assert pixel_area_cm2 == pytest.approx(5.957e-3, rel=1e-4)
    half = nutrition5k_intrinsics(width=320, height=240)
    np.testing.assert_allclose(half, [[232.57, 0, 159.75], [0, 232.57, 119.75], [0, 0, 1]], atol=1e-12)


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 5])
def test_rot90_keeps_projection_exact(k):
    points_m, pixels = points_at_pixels(K_TEST)
    rotated = np.rot90(marker_image(pixels), k)
    K_new = rot90_intrinsics(K_TEST, k, HEIGHT, WIDTH)
    assert K_new[0, 0] > 0 and K_new[1, 1] > 0
    projected = project_points(points_m @ rot90_camera_matrix(k).T, K_new)
    np.testing.assert_allclose(projected, marker_centroids(rotated, len(pixels)), atol=1e-9)
    expected_focals = (52.5, 47.25) if k % 2 == 0 else (47.25, 52.5)
    assert (K_new[0, 0], K_new[1, 1]) == expected_focals


def test_rot90_of_k1_by_hand():
    # One quarter turn: fx' = fy, fy' = fx, cx' = cy, cy' = W - 1 - cx.
    np.testing.assert_array_equal(
        rot90_intrinsics(K_TEST, 1, HEIGHT, WIDTH), [[47.25, 0, 21.0], [0, 52.5, 63 - 30.0], [0, 0, 1]]
    )


def test_flips_keep_projection_exact():
    points_m, pixels = points_at_pixels(K_TEST, seed=1)
    image = marker_image(pixels)
    projected = project_points(points_m @ hflip_camera_matrix().T, hflip_intrinsics(K_TEST, WIDTH))
    np.testing.assert_allclose(projected, marker_centroids(image[:, ::-1], len(pixels)), atol=1e-9)
    projected = project_points(points_m @ vflip_camera_matrix().T, vflip_intrinsics(K_TEST, HEIGHT))
    np.testing.assert_allclose(projected, marker_centroids(image[::-1], len(pixels)), atol=1e-9)
    np.testing.assert_array_equal(hflip_intrinsics(K_TEST, WIDTH)[0], [52.5, 0.0, 33.0])


def test_crop_keeps_projection_exact():
    points_m, pixels = points_at_pixels(K_TEST, seed=2)
    y0, x0 = 5, 9
    cropped = marker_image(pixels)[y0:, x0:]
    inside = (pixels[:, 0] >= x0) & (pixels[:, 1] >= y0)
    K_new = crop_intrinsics(K_TEST, x0, y0)
    assert 3 <= inside.sum() < len(pixels)
    found = marker_centroids(cropped, len(pixels))
    assert np.isnan(found[~inside]).all()
    np.testing.assert_allclose(project_points(points_m[inside], K_new), found[inside], atol=1e-9)


@pytest.mark.parametrize("factor", [2, 3])
def test_upsample_keeps_projection_exact(factor):
    # Pixel replication by an integer factor: old pixel u covers new pixels factor*u .. factor*u + factor - 1.
    points_m, pixels = points_at_pixels(K_TEST, seed=3)
    upsampled = np.repeat(np.repeat(marker_image(pixels), factor, axis=0), factor, axis=1)
    K_new = resize_intrinsics(K_TEST, (HEIGHT, WIDTH), (HEIGHT * factor, WIDTH * factor))
    projected = project_points(points_m, K_new)
    np.testing.assert_allclose(projected, marker_centroids(upsampled, len(pixels)), atol=1e-9)


def test_downsample_keeps_projection_exact():
    # A 2x2 block of old pixels becomes one new pixel whose centre is the block's centre.
    K = make_intrinsics(50.0, 50.0, 31.5, 23.5)
    new_K = resize_intrinsics(K, (HEIGHT, WIDTH), (HEIGHT // 2, WIDTH // 2))
    block_centres_old = np.array([[0.5, 0.5], [10.5, 4.5], [63 - 0.5, 47 - 0.5]])
    rays = np.concatenate([block_centres_old, np.ones((3, 1))], axis=1) @ np.linalg.inv(K).T
    projected = project_points(rays * 0.4, new_K)
    np.testing.assert_allclose(projected, (block_centres_old - 0.5) / 2, atol=1e-9)
    np.testing.assert_allclose(new_K[:2, 2], [15.5, 11.5], atol=1e-12)


def test_composed_ops_keep_projection_exact():
    points_m, pixels = points_at_pixels(K_TEST, seed=4)
    image = marker_image(pixels)
    # rot90 (k=1), then horizontal flip of the rotated (WIDTH x HEIGHT) image.
    K_new = hflip_intrinsics(rot90_intrinsics(K_TEST, 1, HEIGHT, WIDTH), HEIGHT)
    transform = hflip_camera_matrix() @ rot90_camera_matrix(1)
    projected = project_points(points_m @ transform.T, K_new)
    np.testing.assert_allclose(projected, marker_centroids(np.rot90(image)[:, ::-1], len(pixels)), atol=1e-9)


def test_intrinsics_from_fov():
    K = intrinsics_from_fov(640, 480, 90.0)
    np.testing.assert_allclose(K, [[320, 0, 319.5], [0, 320, 239.5], [0, 0, 1]], atol=1e-12)
    # A point 45 degrees to the right projects onto the right edge of the image (u = W - 0.5).
    assert project_points(np.array([[1.0, 0.0, 1.0]]), K)[0, 0] == pytest.approx(639.5)
    with pytest.raises(ValueError, match="fov_deg"):
        intrinsics_from_fov(640, 480, 180.0)


def test_intrinsics_from_35mm_focal():
    # 26 mm equivalent on a 4000x3000 photo: f = 26 * 5000 / 43.2666 = 3004.62 px.
    K = intrinsics_from_35mm_focal(4000, 3000, 26.0)
    assert K[0, 0] == pytest.approx(26.0 * 5000.0 / math.hypot(36.0, 24.0))
    assert K[0, 0] == pytest.approx(3004.62, abs=0.01)
    np.testing.assert_allclose(K[:2, 2], [1999.5, 1499.5])
    # Same diagonal angle of view as the 36x24 mm frame.
    diagonal_fov_deg = 2 * math.degrees(math.atan(2500.0 / K[0, 0]))
    assert diagonal_fov_deg == pytest.approx(2 * math.degrees(math.atan(math.hypot(18.0, 12.0) / 26.0)))
    with pytest.raises(ValueError, match="focal_35mm"):
        intrinsics_from_35mm_focal(4000, 3000, 0.0)


def test_bad_intrinsics_raise():
    with pytest.raises(ValueError, match="shape"):
        resize_intrinsics(np.eye(2), (1, 1), (2, 2))
    with pytest.raises(ValueError, match="positive focal"):
        crop_intrinsics(np.diag([0.0, 1.0, 1.0]), 0, 0)
    skewed = K_TEST.copy()
    skewed[0, 1] = 0.5
    with pytest.raises(ValueError, match="zero-skew"):
        rot90_intrinsics(skewed, 1, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="new_hw"):
        resize_intrinsics(K_TEST, (HEIGHT, WIDTH), (0, 10))
