"""The evaluation figures are written as real PNG images of the expected size."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from n5k_hf.metrics import absolute_percentage_error
from n5k_hf.plots import depth_error_image, plot_ape_histogram, plot_depth_panel, plot_volume_scatter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, *, min_bytes: int, min_width_px: int, min_height_px: int) -> np.ndarray:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] >= min_width_px
    assert pixels.shape[0] >= min_height_px
    # Something was drawn: far more than a blank page's single colour.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    return pixels


def _volumes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ref_ml = rng.uniform(50, 600, 60)
    return ref_ml * rng.normal(1.0, 0.2, 60), ref_ml


def test_volume_scatter(tmp_path: Path) -> None:
    pred_ml, ref_ml = _volumes()
    path = plot_volume_scatter(pred_ml, ref_ml, tmp_path / "plots" / "scatter.png")
    assert path == tmp_path / "plots" / "scatter.png"
    _assert_png(path, min_bytes=10_000, min_width_px=400, min_height_px=400)


def test_volume_scatter_rejects_non_positive_reference(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ref_ml must be finite and > 0"):
        plot_volume_scatter(np.array([1.0, 2.0]), np.array([1.0, 0.0]), tmp_path / "scatter.png")
    assert not (tmp_path / "scatter.png").exists()


def test_ape_histogram(tmp_path: Path) -> None:
    pred_ml, ref_ml = _volumes()
    path = plot_ape_histogram(absolute_percentage_error(pred_ml, ref_ml), tmp_path / "ape.png")
    _assert_png(path, min_bytes=10_000, min_width_px=500, min_height_px=300)
    with pytest.raises(ValueError, match="ape_pct"):
        plot_ape_histogram(np.array([]), tmp_path / "empty.png")


def test_depth_panel_blanks_nan_pixels(tmp_path: Path) -> None:
    height, width = 120, 160
    v_px, u_px = np.mgrid[0:height, 0:width]
    ref_depth_m = 0.359 - np.clip(0.04 - ((u_px - 80) ** 2 + (v_px - 60) ** 2) / 40_000, 0, None)
    pred_depth_m = ref_depth_m + 0.002
    rgb = np.stack([u_px * 255 // width, v_px * 255 // height, np.full_like(u_px, 128)], axis=-1).astype(
        np.uint8
    )
    full_path = plot_depth_panel(rgb, ref_depth_m, pred_depth_m, tmp_path / "full.png", title="dish_1")
    full_pixels = _assert_png(full_path, min_bytes=20_000, min_width_px=1200, min_height_px=250)

    holed_depth_m = ref_depth_m.copy()
    holed_depth_m[:, : width // 4] = np.nan  # a quarter of the image with no sensor reading
    holed_path = plot_depth_panel(rgb, holed_depth_m, pred_depth_m, tmp_path / "holed.png", title="dish_1")
    holed_pixels = _assert_png(holed_path, min_bytes=20_000, min_width_px=1200, min_height_px=250)
    assert holed_pixels.shape == full_pixels.shape
    # The NaN quarter is blank (white) in the reference and the error maps: 2 of 4 panels, a quarter
    # of each, about 1/8 of the panels' area; the white figure margins are the same in both images.
    extra_white_share = np.mean(np.all(holed_pixels == 255, axis=-1)) - np.mean(
        np.all(full_pixels == 255, axis=-1)
    )
    assert 0.05 < extra_white_share < 0.15


def test_depth_panel_rejects_bad_shapes(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="must match rgb"):
        plot_depth_panel(rgb, np.ones((4, 4)), np.ones((4, 5)), tmp_path / "panel.png")
    with pytest.raises(ValueError, match="uint8"):
        plot_depth_panel(rgb.astype(np.float32), np.ones((4, 5)), np.ones((4, 5)), tmp_path / "panel.png")


def test_depth_error_image_colours() -> None:
    ref_depth_m = np.linspace(0.30, 0.40, 20).reshape(4, 5)
    ref_depth_m[0, 0] = np.nan
    pred_depth_m = ref_depth_m.copy()
    pred_depth_m[1, 1] += 0.100  # 100 mm, beyond the 50 mm top of the error scale
    pred_depth_m[2, 2] += 0.020  # 20 mm, 0.4 of the error scale
    image = depth_error_image(ref_depth_m, pred_depth_m, max_error_mm=50.0)
    assert image.shape == (4, 15, 3)
    assert image.dtype == np.uint8
    magma = matplotlib.colormaps["magma"]
    reference_strip, predicted_strip, error_strip = image[:, :5], image[:, 5:10], image[:, 10:]
    # NaN reference: white in the reference and error strips (the prediction has a value there).
    assert reference_strip[0, 0].tolist() == [255, 255, 255]
    assert error_strip[0, 0].tolist() == [255, 255, 255]
    # Equal depths, equal colours; zero error is the bottom of the error colour map.
    assert np.array_equal(reference_strip[3], predicted_strip[3])
    assert error_strip[3, 4].tolist() == list(magma(0.0, bytes=True)[:3])
    assert error_strip[1, 1].tolist() == list(magma(1.0, bytes=True)[:3])
    assert error_strip[2, 2].tolist() == list(magma(0.4, bytes=True)[:3])
    with pytest.raises(ValueError, match="same"):
        depth_error_image(ref_depth_m, pred_depth_m[:3])
