"""Raw Nutrition5k depth I/O: 16-bit PNGs in units of 1e-4 m, 0 = no reading.

In memory depth is float32 metres with NaN for invalid pixels (never 0 m).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

DEPTH_UNITS_PER_M = 10_000
"""Raw depth units per metre (one unit = 0.1 mm)."""

MAX_RAW_DEPTH = np.iinfo(np.uint16).max

DEPTH_DECODE_REASONS = ("empty_file", "decode_error", "not_16bit")


class DepthDecodeError(Exception):
    """A depth PNG that cannot be used; ``reason`` is one of `DEPTH_DECODE_REASONS`."""

    def __init__(self, source: str, reason: str, detail: str = "") -> None:
        if reason not in DEPTH_DECODE_REASONS:
            raise ValueError(f"DepthDecodeError reason must be one of {DEPTH_DECODE_REASONS}, got {reason!r}")
        self.source = source
        self.reason = reason
        message = f"cannot decode depth PNG {source}: {reason}"
        super().__init__(f"{message} ({detail})" if detail else message)


def depth_raw_to_m(raw: np.ndarray) -> np.ndarray:
    """(H, W) uint16 raw depth -> (H, W) float32 metres, NaN where ``raw == 0``."""
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"depth_raw_to_m expects integer raw depth units, got dtype {raw.dtype}")
    depth_m = raw.astype(np.float32) / np.float32(DEPTH_UNITS_PER_M)
    depth_m[raw == 0] = np.nan
    return depth_m


def depth_m_to_raw(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) float metres -> (H, W) uint16 raw units: rounded, clipped to [0, 65535], NaN/inf/<=0 -> 0.

    A positive depth that would round to 0 becomes 1 so that it is not read back as "no reading".
    """
    depth_m = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth_m) & (depth_m > 0)
    units = np.rint(np.where(valid, depth_m, 0.0) * DEPTH_UNITS_PER_M)
    units = np.clip(units, 1, MAX_RAW_DEPTH)
    return np.where(valid, units, 0).astype(np.uint16)


def decode_depth_png(path_or_bytes: str | os.PathLike | bytes) -> np.ndarray:
    """Decode a 16-bit single-channel depth PNG from a path or its bytes to (H, W) uint16.

    Raises:
        DepthDecodeError: ``empty_file`` (0 bytes), ``decode_error`` (not an image OpenCV can read),
            ``not_16bit`` (8-bit, float or multi-channel image); the message names the file.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        source = f"<{len(path_or_bytes)} bytes>"
        data = bytes(path_or_bytes)
    else:
        source = str(path_or_bytes)
        data = Path(path_or_bytes).read_bytes()
    if not data:
        raise DepthDecodeError(source, "empty_file")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DepthDecodeError(source, "decode_error", "OpenCV could not decode the data")
    if image.dtype != np.uint16 or image.ndim != 2:
        detail = f"got dtype {image.dtype} with shape {image.shape}, expected uint16 (H, W)"
        raise DepthDecodeError(source, "not_16bit", detail)
    return image


def encode_depth_png(raw_u16: np.ndarray) -> bytes:
    """Encode (H, W) uint16 raw depth as 16-bit grayscale PNG bytes (lossless)."""
    raw_u16 = np.asarray(raw_u16)
    if raw_u16.dtype != np.uint16 or raw_u16.ndim != 2:
        raise ValueError(
            f"encode_depth_png expects (H, W) uint16, got dtype {raw_u16.dtype} shape {raw_u16.shape}"
        )
    ok, buffer = cv2.imencode(".png", raw_u16)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {raw_u16.shape} uint16 depth PNG")
    return buffer.tobytes()
