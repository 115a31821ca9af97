"""Pinhole camera matrices and their exact updates under image resizes, crops, flips and rotations.

Convention (docs/architecture.md): camera frame x right, y down, z forward; pixel ``(u, v)`` has its
centre at ``(u, v)``, so an image of width ``W`` spans ``u`` in ``[-0.5, W - 0.5]`` and
``u = fx * x / z + cx``. K is a (3, 3) float64 array in pixels.

Flips and 90-degree rotations keep ``fx, fy > 0`` by moving the camera frame with the image: the
matching ``*_camera_matrix`` gives the orthogonal (3, 3) map ``p_new = M @ p_old`` of camera-frame
points, so ``K_new @ (M @ p)`` projects onto the transformed image where ``K @ p`` projected onto the
original. Heights above a plane and volumes are invariant under ``M`` (it is orthogonal and keeps
``z``); a plane ``(n, d)`` becomes ``(M @ n, d)``.
"""

from __future__ import annotations

import math

import numpy as np

NUTRITION5K_CAMERA_HEIGHT_M = 0.359
"""Camera-to-table distance of the Nutrition5k overhead rig (paper, sec. 4.4)."""

NUTRITION5K_PIXEL_AREA_AT_TABLE_M2 = 5.957e-7
"""Table area covered by one pixel at 35.9 cm: 5.957e-3 cm^2 (paper, sec. 4.4)."""

NUTRITION5K_FOCAL_PX = 465.14
"""Focal length in pixels at 640x480: ``0.359 / sqrt(5.957e-7) = 465.137`` (rounded to 0.01 px).

One pixel at depth ``Z`` covers ``Z^2 / (fx * fy)`` of a fronto-parallel surface, so with
``fx = fy = f`` the paper's 5.957e-3 cm^2 at 35.9 cm gives ``f = Z / sqrt(a_pix)``. No intrinsics were
released with Nutrition5k; the D435 factory value (~616 px) gives 1.75x smaller pixel areas.
"""

NUTRITION5K_IMAGE_HW = (480, 640)
"""(height, width) of the Nutrition5k overhead RealSense images."""

FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


def _as_intrinsics(K: np.ndarray) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must be finite with positive focal lengths, got {K.tolist()}")
    return K


def make_intrinsics(fx_px: float, fy_px: float, cx_px: float, cy_px: float) -> np.ndarray:
    """(3, 3) float64 K from focal lengths and principal point, in pixels."""
    return _as_intrinsics([[fx_px, 0.0, cx_px], [0.0, fy_px, cy_px], [0.0, 0.0, 1.0]])


def nutrition5k_intrinsics(width: int = 640, height: int = 480) -> np.ndarray:
    """(3, 3) float64 K of the Nutrition5k overhead camera for an image of ``width`` x ``height``.

    At 640x480: ``f = NUTRITION5K_FOCAL_PX`` (465.14 px, see its docstring for the derivation from the
    paper's pixel area), principal point (320, 240). Other sizes are the 640x480 matrix resized with
    `resize_intrinsics` (the whole frame scaled, aspect changes scale x and y separately).
    """
    base = make_intrinsics(NUTRITION5K_FOCAL_PX, NUTRITION5K_FOCAL_PX, 320.0, 240.0)
    return resize_intrinsics(base, NUTRITION5K_IMAGE_HW, (height, width))


def _check_hw(name: str, hw: tuple[int, int]) -> tuple[int, int]:
    if len(hw) != 2 or hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f"{name} must be a positive (height, width), got {hw!r}")
    return int(hw[0]), int(hw[1])


def resize_intrinsics(K: np.ndarray, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> np.ndarray:
    """K after resizing the whole image from ``old_hw`` to ``new_hw`` (height, width) pixels.

    With pixel centres at integers, a resize by ``s`` maps ``u`` to ``(u + 0.5) * s - 0.5`` (the image
    edges ``-0.5`` and ``W - 0.5`` map onto the new edges), hence ``fx' = fx * sx`` and
    ``cx' = (cx + 0.5) * sx - 0.5``; the same along y.
    """
    K = _as_intrinsics(K)
    old_h, old_w = _check_hw("old_hw", old_hw)
    new_h, new_w = _check_hw("new_hw", new_hw)
    pixel_map = np.array(
        [
            [new_w / old_w, 0.0, 0.5 * new_w / old_w - 0.5],
            [0.0, new_h / old_h, 0.5 * new_h / old_h - 0.5],
            [0.0, 0.0, 1.0],
        ]
    )
    return pixel_map @ K


def crop_intrinsics(K: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """K after cropping the image to start at column ``x0`` and row ``y0`` (``cx -= x0``, ``cy -= y0``)."""
    K = _as_intrinsics(K)
    K[0, 2] -= x0
    K[1, 2] -= y0
    return K


def hflip_camera_matrix() -> np.ndarray:
    """(3, 3) camera-frame map that goes with `hflip_intrinsics`: ``x -> -x``."""
    return np.diag([-1.0, 1.0, 1.0])


def vflip_camera_matrix() -> np.ndarray:
    """(3, 3) camera-frame map that goes with `vflip_intrinsics`: ``y -> -y``."""
    return np.diag([1.0, -1.0, 1.0])


def hflip_intrinsics(K: np.ndarray, width: int) -> np.ndarray:
    """K for ``img[:, ::-1]`` of an image ``width`` pixels wide (camera x mirrored): ``cx' = W - 1 - cx``."""
    K = _as_intrinsics(K)
    pixel_map = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return pixel_map @ K @ hflip_camera_matrix().T


def vflip_intrinsics(K: np.ndarray, height: int) -> np.ndarray:
    """K for ``img[::-1]`` of an image ``height`` pixels tall (camera y mirrored): ``cy' = H - 1 - cy``."""
    K = _as_intrinsics(K)
    pixel_map = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, height - 1.0], [0.0, 0.0, 1.0]])
    return pixel_map @ K @ vflip_camera_matrix().T


def rot90_camera_matrix(k: int) -> np.ndarray:
    """(3, 3) camera-frame rotation about z that goes with `rot90_intrinsics` for ``np.rot90(img, k)``.

    One counter-clockwise quarter turn of the image maps ``(x, y, z)`` to ``(y, -x, z)``.
    """
    quarter = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return np.linalg.matrix_power(quarter, k % 4)


def rot90_intrinsics(K: np.ndarray, k: int, height: int, width: int) -> np.ndarray:
    """K for ``np.rot90(img, k)`` of an image ``height`` x ``width``; ``k`` counter-clockwise quarter turns.

    One quarter turn sends pixel ``(u, v)`` to ``(v, W - 1 - u)`` in a ``W`` x ``H`` image, so
    ``fx' = fy``, ``fy' = fx``, ``cx' = cy``, ``cy' = W - 1 - cx``, with camera points rotated by
    `rot90_camera_matrix`. K must have zero skew.
    """
    K = _as_intrinsics(K)
    if K[0, 1] != 0.0:
        raise ValueError(f"rot90_intrinsics needs a zero-skew K, got K[0, 1] = {K[0, 1]}")
    for _ in range(k % 4):
        K = np.array(
            [[K[1, 1], 0.0, K[1, 2]], [0.0, K[0, 0], width - 1.0 - K[0, 2]], [0.0, 0.0, 1.0]],
        )
        height, width = width, height
    return K


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """K with square pixels from the horizontal field of view ``fov_deg`` (edge to edge of the image).

    ``fx = fy = (W / 2) / tan(fov / 2)``, principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)``.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be within (0, 180), got {fov_deg}")
    _check_hw("(height, width)", (height, width))
    focal_px = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    return make_intrinsics(focal_px, focal_px, (width - 1) / 2.0, (height - 1) / 2.0)


def intrinsics_from_35mm_focal(width: int, height: int, focal_35mm: float) -> np.ndarray:
    """K from the EXIF ``FocalLengthIn35mmFilm`` (millimetres) of a ``width`` x ``height`` photo.

    A 35 mm-equivalent focal length gives the same diagonal angle of view as on a 36x24 mm frame, so
    ``f_px = focal_35mm * hypot(W, H) / hypot(36, 24)``; square pixels, principal point at the centre.
    """
    if not (math.isfinite(focal_35mm) and focal_35mm > 0):
        raise ValueError(f"focal_35mm must be a positive number of millimetres, got {focal_35mm!r}")
    _check_hw("(height, width)", (height, width))
    focal_px = focal_35mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
    return make_intrinsics(focal_px, focal_px, (width - 1) / 2.0, (height - 1) / 2.0)


def project_points(points_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Project (N, 3) camera-frame points (z > 0) to (N, 2) pixel coordinates ``(u, v)``."""
    points_m = np.asarray(points_m, dtype=np.float64)
    homogeneous = points_m @ _as_intrinsics(K).T
    return homogeneous[:, :2] / homogeneous[:, 2:3]
