"""Robust table plane: back-projection, a ring of table pixels around the food, seeded RANSAC fit.

Plane convention (docs/architecture.md): ``n . p + d = 0`` in camera coordinates (metres) with the
unit normal ``n`` pointing towards the camera, so ``height = n . p + d > 0`` above the table and the
camera centre itself is at height ``d > 0``; for a table in front of the camera ``n[2] < 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from n5k_hf.geometry.intrinsics import NUTRITION5K_FOCAL_PX

MIN_PLANE_PIXELS = 30

# Table ring around the food at the Nutrition5k focal length (see ring_widths_px).
RING_INNER_PX = 10
RING_OUTER_PX = 40
"""Fewest valid table pixels `fit_table_plane` accepts."""

RANSAC_SAMPLE_SIZE = 1000
"""Table points each RANSAC hypothesis is scored on (an even subsample of the fitting points)."""

MAX_FIT_POINTS = 6000
"""Valid ring pixels kept for the fit (an even subsample in raster order); least squares uses their inliers."""

BORDER_FRAME_PX = 40
"""Width of the image border used as table pixels when no food mask is given."""

REFINE_ROUNDS = 2


@dataclass(frozen=True, eq=False)
class Plane:
    """Plane ``normal . p + offset_m = 0``; ``normal`` (3,) unit length, pointing towards the camera."""

    normal: np.ndarray
    offset_m: float

    def __post_init__(self) -> None:
        normal = np.asarray(self.normal, dtype=np.float64).reshape(-1)
        if normal.shape != (3,) or not np.all(np.isfinite(normal)):
            raise ValueError(f"Plane.normal must be 3 finite numbers, got {self.normal!r}")
        if abs(np.linalg.norm(normal) - 1.0) > 1e-6:
            raise ValueError(f"Plane.normal must have unit length, got norm {np.linalg.norm(normal)}")
        if not np.isfinite(self.offset_m):
            raise ValueError(f"Plane.offset_m must be finite, got {self.offset_m!r}")
        normal.setflags(write=False)
        object.__setattr__(self, "normal", normal)
        object.__setattr__(self, "offset_m", float(self.offset_m))

    def as_array(self) -> np.ndarray:
        """(4,) float64 ``(nx, ny, nz, d)``."""
        return np.array([*self.normal, self.offset_m])

    @classmethod
    def from_array(cls, plane: np.ndarray) -> Plane:
        """Plane from (4,) ``(nx, ny, nz, d)`` of any scale; rescaled to a unit normal with ``d >= 0``."""
        plane = np.asarray(plane, dtype=np.float64).reshape(-1)
        if plane.shape != (4,) or not np.all(np.isfinite(plane)):
            raise ValueError(f"a plane must be 4 finite numbers (nx, ny, nz, d), got {plane.tolist()}")
        norm = np.linalg.norm(plane[:3])
        if norm == 0.0:
            raise ValueError(f"a plane needs a non-zero normal, got {plane.tolist()}")
        plane = plane / norm
        if plane[3] < 0:
            plane = -plane
        return cls(plane[:3], plane[3])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plane):
            return NotImplemented
        return bool(np.array_equal(self.normal, other.normal)) and self.offset_m == other.offset_m

    def __hash__(self) -> int:
        return hash((*self.normal.tolist(), self.offset_m))


def _check_depth_and_k(depth_m: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise ValueError(f"depth_m must have shape (H, W), got {depth_m.shape}")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    return depth_m, K


def _ray_components(
    K: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, z of ``K^-1 (u, v, 1)`` by broadcasting ``rows`` against ``cols`` (no matrix product:
    a multi-threaded BLAS call per frame costs more than it saves at this size)."""
    K_inv = np.linalg.inv(np.asarray(K, dtype=np.float64))
    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    x, y, z = (K_inv[i, 0] * cols + K_inv[i, 1] * rows + K_inv[i, 2] for i in range(3))
    return x, y, z


def pixel_directions(K: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, 3) rays ``K^-1 (u, v, 1)`` of the pixels at ``rows`` (v) and ``cols`` (u), each (N,); z = 1."""
    x, y, z = _ray_components(K, rows, cols)
    return np.stack(np.broadcast_arrays(x, y, z), axis=-1)


def backproject(depth_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W) depth in metres -> (H, W, 3) camera-frame points ``Z * K^-1 (u, v, 1)`` (NaN stays NaN)."""
    depth_m, K = _check_depth_and_k(depth_m, K)
    height, width = depth_m.shape
    x, y, z = _ray_components(K, np.arange(height)[:, None], np.arange(width)[None, :])
    return np.stack([x * depth_m, y * depth_m, z * depth_m], axis=-1)


def valid_depth(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) bool: finite and positive depth (NaN and 0 mean no reading)."""
    depth_m = np.asarray(depth_m)
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth_m) & (depth_m > 0)


def ring_widths_px(K: np.ndarray) -> tuple[int, int]:
    """Ring widths ``(inner_px, outer_px)`` for camera ``K``: 10-40 px at the Nutrition5k focal length.

    About 8-31 mm on a table 0.359 m away; scaled with the focal length in pixels, so a resized,
    cropped or zoomed image (K updated) rings the same part of the scene.
    """
    K = np.asarray(K, dtype=np.float64)
    scale = 0.5 * (K[0, 0] + K[1, 1]) / NUTRITION5K_FOCAL_PX
    inner_px = max(1, round(RING_INNER_PX * scale))
    return inner_px, max(inner_px + 2, round(RING_OUTER_PX * scale))


def bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Rows and columns of the bounding box of the true pixels of (H, W) bool ``mask``; None if none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def table_ring_mask(
    mask: np.ndarray, inner_px: int = RING_INNER_PX, outer_px: int = RING_OUTER_PX
) -> np.ndarray:
    """(H, W) bool ring of pixels between ``inner_px`` (exclusive) and ``outer_px`` (inclusive) from ``mask``.

    The ring never touches the mask: a gap of ``inner_px`` keeps blurred food edges out of the plane fit.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if not 0 <= inner_px < outer_px:
        raise ValueError(f"need 0 <= inner_px < outer_px, got inner_px={inner_px}, outer_px={outer_px}")
    box = bounding_box(mask)
    if box is None:
        return np.zeros_like(mask)
    # Only the mask's bounding box grown by outer_px can hold ring pixels (a chamfer distance is at
    # least the Chebyshev distance), and inside it the distances equal those over the whole frame.
    window = tuple(slice(max(side.start - outer_px, 0), side.stop + outer_px) for side in box)
    distance_px = cv2.distanceTransform((~mask[window]).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    ring = np.zeros_like(mask)
    ring[window] = (distance_px > inner_px) & (distance_px <= outer_px)
    return ring


def border_frame_mask(shape: tuple[int, int], width_px: int = BORDER_FRAME_PX) -> np.ndarray:
    """(H, W) bool frame of ``width_px`` pixels along the image border."""
    frame = np.ones(shape, dtype=bool)
    frame[width_px:-width_px, width_px:-width_px] = False
    return frame


def _orient_towards_camera(normal: np.ndarray, offset_m: float) -> tuple[np.ndarray, float]:
    return (-normal, -offset_m) if offset_m < 0 else (normal, offset_m)


def _least_squares_plane(points_m: np.ndarray) -> tuple[np.ndarray, float]:
    centroid = points_m.mean(axis=0)
    centred = points_m - centroid
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)
    normal = eigenvectors[:, 0]
    return _orient_towards_camera(normal, -float(normal @ centroid))


def _ransac_plane(
    points_m: np.ndarray, rng: np.random.Generator, inlier_threshold_m: float, iterations: int
) -> tuple[np.ndarray, float]:
    """Best of ``iterations`` three-point hypotheses by inlier count (ties: the earliest)."""
    triplets = points_m[rng.integers(0, len(points_m), size=(iterations, 3))]
    normals = np.cross(triplets[:, 1] - triplets[:, 0], triplets[:, 2] - triplets[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    usable = norms > 1e-12
    if not usable.any():
        raise ValueError("fit_table_plane: every RANSAC sample was degenerate (collinear table points)")
    normals = normals[usable] / norms[usable, None]
    offsets = -np.einsum("ij,ij->i", normals, triplets[usable, 0])
    # Distances of every point to every hypothesis, (hypotheses, points), in float32 by broadcasting:
    # a BLAS matrix product here is threaded by OpenBLAS and runs 10-100x slower on a busy machine.
    points32 = points_m.T.astype(np.float32)
    normals32 = normals.astype(np.float32)
    distances = normals32[:, :1] * points32[0] + offsets.astype(np.float32)[:, None]
    distances += normals32[:, 1:2] * points32[1]
    distances += normals32[:, 2:3] * points32[2]
    np.abs(distances, out=distances)
    inlier_counts = np.count_nonzero(distances < inlier_threshold_m, axis=1)
    best = int(np.argmax(inlier_counts))
    return normals[best], float(offsets[best])


def fit_table_plane(
    depth_m: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    ring: np.ndarray | None = None,
    seed: int = 0,
    inlier_threshold_m: float = 0.003,
    iterations: int = 200,
) -> Plane:
    """Fit the table plane on table pixels around the food: seeded RANSAC, then least squares on inliers.

    Args:
        depth_m: (H, W) depth in metres, NaN or 0 = invalid.
        K: (3, 3) intrinsics.
        mask: (H, W) bool food mask; the table pixels are `table_ring_mask` of it. With neither
            ``mask`` nor ``ring``, a `border_frame_mask` of the image is used.
        ring: (H, W) bool table pixels to fit on (overrides the ring of ``mask``; mask pixels excluded).
        seed: RANSAC seed; the result is a deterministic function of the inputs and the seed.
        inlier_threshold_m: distance to the plane within which a point is an inlier.
        iterations: RANSAC hypotheses.

    RANSAC keeps the plane with the most inliers, so when the ring also hits a plate (a parallel plane
    1-2 cm higher) the dominant surface wins. At most `MAX_FIT_POINTS` valid ring pixels (an even
    subsample) are used: hypotheses are scored on `RANSAC_SAMPLE_SIZE` of them, the least-squares
    refinement uses all their inliers.

    Raises:
        ValueError: fewer than `MIN_PLANE_PIXELS` valid table pixels, or inconsistent shapes.
    """
    depth_m, K = _check_depth_and_k(depth_m, K)
    if ring is None:
        ring = border_frame_mask(depth_m.shape) if mask is None else table_ring_mask(mask, *ring_widths_px(K))
    ring = np.asarray(ring, dtype=bool)
    if ring.shape != depth_m.shape:
        raise ValueError(f"ring shape {ring.shape} differs from depth shape {depth_m.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != depth_m.shape:
            raise ValueError(f"mask shape {mask.shape} differs from depth shape {depth_m.shape}")
        ring = ring & ~mask
    if iterations < 1 or inlier_threshold_m <= 0:
        raise ValueError(
            f"need iterations >= 1 and inlier_threshold_m > 0, got {iterations}, {inlier_threshold_m}"
        )

    ring_pixels = np.flatnonzero(ring)
    ring_pixels = ring_pixels[valid_depth(depth_m.ravel()[ring_pixels])]
    if len(ring_pixels) < MIN_PLANE_PIXELS:
        raise ValueError(
            f"fit_table_plane: only {len(ring_pixels)} valid table pixels in a ring of {int(ring.sum())} "
            f"(need {MIN_PLANE_PIXELS}); the mask may cover the image or the depth around it is missing"
        )
    ring_pixels = ring_pixels[:: -(-len(ring_pixels) // MAX_FIT_POINTS)]
    rows, cols = np.divmod(ring_pixels, depth_m.shape[1])
    points_m = pixel_directions(K, rows, cols) * depth_m.ravel()[ring_pixels].astype(np.float64)[:, None]

    rng = np.random.default_rng(seed)
    sample = points_m[:: -(-len(points_m) // RANSAC_SAMPLE_SIZE)]
    normal, offset_m = _ransac_plane(sample, rng, inlier_threshold_m, iterations)
    for _ in range(REFINE_ROUNDS):
        inliers = np.abs(points_m @ normal + offset_m) < inlier_threshold_m
        if inliers.sum() < 3:
            break
        normal, offset_m = _least_squares_plane(points_m[inliers])
    normal, offset_m = _orient_towards_camera(normal, offset_m)
    return Plane(normal / np.linalg.norm(normal), offset_m)


def height_above_plane_m(points_m: np.ndarray, plane: Plane) -> np.ndarray:
    """(..., 3) camera-frame points -> (...) signed height ``n . p + d`` above the plane in metres."""
    points_m = np.asarray(points_m, dtype=np.float64)
    if points_m.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {points_m.shape}")
    return points_m @ plane.normal + plane.offset_m


def height_map_m(depth_m: np.ndarray, K: np.ndarray, plane: Plane) -> np.ndarray:
    """(H, W) depth in metres -> (H, W) float64 signed height above ``plane`` of every pixel (NaN stays NaN).

    Equals ``height_above_plane_m(backproject(depth_m, K), plane)`` without the (H, W, 3) point cloud:
    ``n . (Z K^-1 (u, v, 1)) + d = Z (a u + b v + c) + d`` with ``(a, b, c) = n K^-1``.
    """
    depth_m, K = _check_depth_and_k(depth_m, K)
    a_u, a_v, a_1 = plane.normal @ np.linalg.inv(K)
    height, width = depth_m.shape
    ray_dot_normal = (a_u * np.arange(width) + a_1)[None, :] + a_v * np.arange(height)[:, None]
    return depth_m * ray_dot_normal + plane.offset_m
