"""One Nutrition5k dish -> the computed columns of its dataset row, or the reason it cannot be used.

`convert_dish` runs in the converter's worker processes (``n5k_hf.data.convert``): it reads the
dish's files, validates them, builds the food mask, fits the table plane and integrates the volume.
It imports neither ``datasets`` nor ``torch``, so a worker starts in a fraction of a second.

Skip reasons (a dish that fails a check raises `DishSkipped`; the converter reports it, never drops
it silently). ``not_16bit`` and ``plane_fit_failed`` extend the issue's list: an 8-bit depth PNG
decodes fine but has lost the 1e-4 m units, and ``not_16bit`` says so more precisely than
``decode_error``.

======================= ==============================================================
``no_metadata``         no parsable row in ``dish_metadata_cafe{1,2}.csv`` (detail: the
                        parser's message when its row was rejected; decided by the converter)
``missing_rgb``         ``rgb.png`` missing (also when the whole dish folder is missing)
``missing_depth``       ``depth_raw.png`` missing
``empty_file``          ``rgb.png``, ``depth_raw.png`` or the external mask is 0 bytes
``decode_error``        a PNG that cannot be decoded (truncated, corrupt)
``not_16bit``           ``depth_raw.png`` decodes but is not single-channel 16-bit (8-bit)
``bad_shape``           image not 640x480 (rgb or depth), or an external mask of another size
``no_valid_depth``      fewer than `MIN_VALID_DEPTH_SHARE` of the depth pixels hold a reading
``depth_scale_suspect`` median valid depth outside `DEPTH_MEDIAN_RANGE_M` (0.2-0.45 m; the
                        camera is 0.359 m above the table), e.g. values 10x too small
``empty_mask``          the food mask holds no pixel (external mask all 0, or nothing found
                        on the support by the depth fallback)
``plane_fit_failed``    too few valid table pixels around the food to fit the plane
======================= ==============================================================
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from n5k_hf.data.masks import (
    DepthMaskConfig,
    MaskFileError,
    TooManyItemsError,
    depth_food_labels,
    encode_mask_png,
    read_external_mask,
)
from n5k_hf.data.nutrition5k import Nutrition5kLayout
from n5k_hf.geometry.depth import DepthDecodeError, decode_depth_png, depth_raw_to_m
from n5k_hf.geometry.intrinsics import NUTRITION5K_IMAGE_HW
from n5k_hf.geometry.plane import fit_table_plane
from n5k_hf.geometry.volume import integrate_volume_ml

SKIP_REASONS = (
    "no_metadata",
    "missing_rgb",
    "missing_depth",
    "empty_file",
    "decode_error",
    "not_16bit",
    "bad_shape",
    "no_valid_depth",
    "depth_scale_suspect",
    "empty_mask",
    "plane_fit_failed",
)

DEPTH_MEDIAN_RANGE_M = (0.2, 0.45)
"""Plausible median depth of an overhead Nutrition5k frame (the table is 0.359 m from the camera)."""

MIN_VALID_DEPTH_SHARE = 0.05
"""Fewest depth pixels (share of the frame) with a reading for a dish to be usable."""


@dataclass(frozen=True)
class DishConversionSettings:
    """What every dish of one conversion shares; sent once to each worker process."""

    root: str
    masks_dir: str | None
    K: tuple[tuple[float, ...], ...]
    """(3, 3) intrinsics of the Nutrition5k overhead camera, as nested tuples (picklable, hashable)."""
    integrator: str
    mask_config: DepthMaskConfig = field(default_factory=DepthMaskConfig)


class DishSkipped(Exception):
    """A dish that cannot be converted: ``reason`` (in `SKIP_REASONS`), the file at fault, a detail."""

    def __init__(self, reason: str, path: Path | str, detail: str = ""):
        if reason not in SKIP_REASONS:
            raise ValueError(f"DishSkipped reason must be one of {SKIP_REASONS}, got {reason!r}")
        super().__init__(f"{reason}: {path}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.path = str(path)
        self.detail = detail


def _read_nonempty(path: Path, missing_reason: str) -> bytes:
    if not path.parent.is_dir():
        raise DishSkipped(missing_reason, path.parent, "dish folder missing")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DishSkipped(missing_reason, path, "file missing") from None
    if not data:
        raise DishSkipped("empty_file", path, "0 bytes")
    return data


def _rgb_size(path: Path, data: bytes) -> tuple[int, int]:
    """(H, W) of an RGB PNG whose chunks all check out (PIL ``verify``: CRCs, no truncation)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.verify()
    except Exception as error:  # PIL raises many types for corrupt files
        raise DishSkipped("decode_error", path, f"{type(error).__name__}: {error}") from None
    return height, width


def _checked_depth_m(path: Path, data: bytes) -> np.ndarray:
    """(480, 640) float32 depth in metres (NaN = no reading) of a usable ``depth_raw.png``."""
    try:
        raw = decode_depth_png(data)
    except DepthDecodeError as error:
        raise DishSkipped(error.reason, path, str(error).split(": ", 1)[-1]) from None
    if raw.shape != NUTRITION5K_IMAGE_HW:
        raise DishSkipped("bad_shape", path, f"depth is {raw.shape[1]}x{raw.shape[0]}, expected 640x480")
    share = np.count_nonzero(raw) / raw.size
    if share < MIN_VALID_DEPTH_SHARE:
        raise DishSkipped("no_valid_depth", path, f"{share:.1%} of pixels hold a reading")
    # Every 4th pixel of every 4th row: the median of 19,200 samples, 16x cheaper than all of them.
    sample = raw[::4, ::4]
    sample = sample[sample > 0]
    median_m = float(np.median(sample if sample.size else raw[raw > 0])) * 1e-4
    low, high = DEPTH_MEDIAN_RANGE_M
    if not low <= median_m <= high:
        raise DishSkipped(
            "depth_scale_suspect", path, f"median depth {median_m:.4f} m outside {low}-{high} m"
        )
    return depth_raw_to_m(raw)


def convert_dish(dish_id: str, settings: DishConversionSettings) -> dict[str, Any]:
    """The computed columns of one dish's row; raises `DishSkipped` when the dish cannot be used.

    Returns:
        ``image`` and ``depth`` (the original PNG bytes), ``mask`` (label PNG bytes), ``volume_ml``
        (float), ``plane`` ((4,) float64 ``n, d``) and ``mask_source`` (``external`` or ``depth``).
        ``dish_id``, ``K`` and the metadata columns are added by the converter.
    """
    layout = Nutrition5kLayout(settings.root)
    rgb_path, depth_path = layout.rgb_path(dish_id), layout.depth_raw_path(dish_id)
    rgb_bytes = _read_nonempty(rgb_path, "missing_rgb")
    depth_bytes = _read_nonempty(depth_path, "missing_depth")
    rgb_hw = _rgb_size(rgb_path, rgb_bytes)
    if rgb_hw != NUTRITION5K_IMAGE_HW:
        raise DishSkipped("bad_shape", rgb_path, f"rgb is {rgb_hw[1]}x{rgb_hw[0]}, expected 640x480")
    depth_m = _checked_depth_m(depth_path, depth_bytes)
    K = np.array(settings.K, dtype=np.float64)

    mask_path = Path(settings.masks_dir) / f"{dish_id}.png" if settings.masks_dir else None
    if mask_path is not None and mask_path.is_file():
        try:
            external = read_external_mask(mask_path, NUTRITION5K_IMAGE_HW)
        except MaskFileError as error:
            raise DishSkipped(error.reason, mask_path, str(error)) from None
        labels, mask_png = external.labels, external.png_bytes
        mask_source = "external"
    else:
        try:
            labels = depth_food_labels(depth_m, K, **settings.mask_config.as_dict())
        except TooManyItemsError:
            raise
        except ValueError as error:
            raise DishSkipped(
                "plane_fit_failed", depth_path, f"table plane for the depth mask: {error}"
            ) from None
        mask_png = encode_mask_png(labels)
        mask_source = "depth"
    food = labels > 0
    if not food.any():
        raise DishSkipped("empty_mask", mask_path if mask_source == "external" else depth_path, mask_source)
    try:
        plane = fit_table_plane(depth_m, K, food)
    except ValueError as error:
        raise DishSkipped("plane_fit_failed", depth_path, str(error)) from None
    return {
        "image": {"bytes": rgb_bytes, "path": None},
        "depth": {"bytes": depth_bytes, "path": None},
        "mask": {"bytes": mask_png, "path": None},
        "volume_ml": integrate_volume_ml(depth_m, food, K, settings.integrator, plane=plane),
        "plane": plane.as_array(),
        "mask_source": mask_source,
    }
