"""Evaluation figures as PNG files: volume scatter, APE histogram, depth panel.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, without pyplot:
no GUI backend is needed and the caller's pyplot backend and figure list are left alone.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable

from n5k_hf.metrics.volume import volume_metrics

_DPI = 120


def _new_figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False).ravel())


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI, bbox_inches="tight", format="png")
    return path


def plot_volume_scatter(pred_ml: np.ndarray, ref_ml: np.ndarray, path: str | Path) -> Path:
    """Predicted against reference volume with the y = x line; MAE and MAPE in the title.

    Args:
        pred_ml: (N,) predicted volumes in mL.
        ref_ml: (N,) reference volumes in mL, all > 0.
        path: the PNG to write.
    """
    metrics = volume_metrics(pred_ml, ref_ml)
    pred = np.asarray(pred_ml, dtype=np.float64)
    ref = np.asarray(ref_ml, dtype=np.float64)
    upper_ml = 1.05 * max(float(pred.max()), float(ref.max()))
    lower_ml = min(0.0, float(pred.min()))
    figure, (axes,) = _new_figure(1, 1, (5.5, 5.5))
    axes.plot(
        [lower_ml, upper_ml], [lower_ml, upper_ml], color="0.4", linestyle="--", linewidth=1, label="y = x"
    )
    axes.scatter(ref, pred, s=14, alpha=0.7, edgecolors="none", label=f"dishes (n = {metrics['count']})")
    axes.set_xlim(lower_ml, upper_ml)
    axes.set_ylim(lower_ml, upper_ml)
    axes.set_aspect("equal")
    axes.set_xlabel("reference volume (mL)")
    axes.set_ylabel("predicted volume (mL)")
    axes.set_title(f"Volume: MAE {metrics['volume_mae_ml']:.1f} mL, MAPE {metrics['volume_mape']:.1f} %")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left")
    return _save(figure, path)


def plot_ape_histogram(ape_pct: np.ndarray, path: str | Path, *, bin_width_pct: float = 5.0) -> Path:
    """Histogram of absolute percentage errors, with the median and the mean marked.

    Args:
        ape_pct: (N,) absolute percentage errors in percent (see
            :func:`n5k_hf.metrics.volume.absolute_percentage_error`).
        path: the PNG to write.
        bin_width_pct: histogram bin width in percent.
    """
    ape = np.asarray(ape_pct, dtype=np.float64)
    if ape.ndim != 1 or ape.size == 0 or not np.all(np.isfinite(ape)) or np.any(ape < 0):
        raise ValueError(
            f"plot_ape_histogram: ape_pct must be a non-empty (N,) array of finite values >= 0, got {ape.shape}"
        )
    upper_pct = bin_width_pct * (np.floor(ape.max() / bin_width_pct) + 1)
    bins = np.arange(0.0, upper_pct + bin_width_pct / 2, bin_width_pct)
    figure, (axes,) = _new_figure(1, 1, (6.5, 4))
    axes.hist(ape, bins=bins, color="tab:blue", alpha=0.8, edgecolor="white")
    axes.axvline(
        float(np.median(ape)), color="tab:orange", linewidth=1.5, label=f"median {np.median(ape):.1f} %"
    )
    axes.axvline(
        float(np.mean(ape)),
        color="tab:red",
        linestyle="--",
        linewidth=1.5,
        label=f"mean {np.mean(ape):.1f} %",
    )
    axes.set_xlabel("absolute percentage error of the volume (%)")
    axes.set_ylabel("dishes")
    axes.set_title(f"Volume APE over {ape.size} dishes")
    axes.legend()
    axes.grid(True, axis="y", alpha=0.3)
    return _save(figure, path)


def _depth_scale_m(ref_depth_m: np.ndarray, pred_depth_m: np.ndarray) -> tuple[float, float]:
    """Colour range (m) of two (H, W) depth maps: 1st-99th percentile of the reference (else the prediction)."""
    for depth_m in (ref_depth_m, pred_depth_m):
        finite = depth_m[np.isfinite(depth_m)]
        if finite.size:
            low_m, high_m = np.percentile(finite, [1, 99])
            return float(low_m), float(high_m)
    raise ValueError("neither depth map has a finite value")


def plot_depth_panel(
    rgb: np.ndarray,
    ref_depth_m: np.ndarray,
    pred_depth_m: np.ndarray,
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """RGB, reference depth, predicted depth and absolute error (mm), each with a colour bar.

    Both depth maps share one colour scale (set by the reference); NaN pixels are left blank.

    Args:
        rgb: (H, W, 3) uint8 image.
        ref_depth_m: (H, W) reference depth in metres, NaN = no reading.
        pred_depth_m: (H, W) predicted depth in metres.
        path: the PNG to write.
        title: figure title (for example the dish id).
    """
    rgb = np.asarray(rgb)
    ref = np.asarray(ref_depth_m, dtype=np.float64)
    pred = np.asarray(pred_depth_m, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"plot_depth_panel: rgb must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    if ref.shape != rgb.shape[:2] or pred.shape != rgb.shape[:2]:
        raise ValueError(
            f"plot_depth_panel: ref_depth_m {ref.shape} and pred_depth_m {pred.shape} must match rgb {rgb.shape[:2]}"
        )
    depth_min_m, depth_max_m = _depth_scale_m(ref, pred)
    error_mm = 1000.0 * np.abs(pred - ref)
    finite_error = error_mm[np.isfinite(error_mm)]
    error_max_mm = float(np.percentile(finite_error, 99)) if finite_error.size else 1.0

    depth_cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    error_cmap = matplotlib.colormaps["magma"].with_extremes(bad="white")
    height, width = ref.shape
    figure, axes = _new_figure(1, 4, (4 * 3.8, 3.8 * height / width + 0.5))
    axes[0].imshow(rgb)
    axes[0].set_title("RGB")
    # An empty slot the width of a colour bar keeps the four images the same size.
    make_axes_locatable(axes[0]).append_axes("right", size="5%", pad=0.05).axis("off")
    panels = (
        (axes[1], ref, "reference depth (m)", depth_cmap, depth_min_m, depth_max_m),
        (axes[2], pred, "predicted depth (m)", depth_cmap, depth_min_m, depth_max_m),
        (axes[3], error_mm, "|predicted - reference| (mm)", error_cmap, 0.0, max(error_max_mm, 1e-3)),
    )
    for panel_axes, values, panel_title, cmap, vmin, vmax in panels:
        image = panel_axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
        panel_axes.set_title(panel_title)
        colorbar_axes = make_axes_locatable(panel_axes).append_axes("right", size="5%", pad=0.05)
        figure.colorbar(image, cax=colorbar_axes)
    for panel_axes in axes:
        panel_axes.set_xticks([])
        panel_axes.set_yticks([])
    if title:
        figure.suptitle(title, y=0.96)
    return _save(figure, path)


def depth_error_image(
    ref_depth_m: np.ndarray, pred_depth_m: np.ndarray, *, max_error_mm: float = 50.0
) -> np.ndarray:
    """Reference depth, predicted depth and absolute error side by side, as an image for trackers.

    Depths share the reference's colour range (viridis); the error uses a fixed range 0..``max_error_mm``
    (magma), so that images logged at different steps compare. NaN pixels are white.

    Args:
        ref_depth_m: (H, W) reference depth in metres, NaN = no reading.
        pred_depth_m: (H, W) predicted depth in metres.
        max_error_mm: error shown at the top of the colour map (larger errors saturate).

    Returns:
        (H, 3 * W, 3) uint8 RGB image.
    """
    ref = np.asarray(ref_depth_m, dtype=np.float64)
    pred = np.asarray(pred_depth_m, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != pred.shape:
        raise ValueError(
            f"depth_error_image: ref_depth_m {ref.shape} and pred_depth_m {pred.shape} must be the same (H, W)"
        )
    if not max_error_mm > 0:
        raise ValueError(f"depth_error_image: max_error_mm must be > 0, got {max_error_mm}")
    depth_min_m, depth_max_m = _depth_scale_m(ref, pred)
    depth_span_m = max(depth_max_m - depth_min_m, 1e-6)
    error_mm = 1000.0 * np.abs(pred - ref)
    strips = []
    for values, cmap_name, low, span in (
        (ref, "viridis", depth_min_m, depth_span_m),
        (pred, "viridis", depth_min_m, depth_span_m),
        (error_mm, "magma", 0.0, max_error_mm),
    ):
        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="white")
        normalised = np.ma.masked_invalid(np.clip((values - low) / span, 0.0, 1.0))
        strips.append(cmap(normalised, bytes=True)[..., :3])
    return np.concatenate(strips, axis=1)
