"""Food volume from a depth map, a food mask and the table plane (numpy).

Methods (`VOLUME_METHODS`), measured on ray-cast scenes (tests/test_volume.py, 5% invalid pixels,
plane fitted on the ring around the mask):

* ``heightmap`` (default, accurate): back-project the masked pixels and express them in table-plane
  coordinates (two in-plane axes + height). Each pixel owns the rectangle of the plane reaching
  halfway to its neighbours (its footprint; visible side walls own none, hidden edges extend half a
  pixel). The footprints are rasterised onto ``cell_size_m`` square cells: a cell's height is the
  overlap-weighted mean height over it, its coverage the covered fraction; interior holes of the
  footprint are filled with the nearest height; ``V = sum(cell_area * coverage * height)``.
  Within 1% (worst -0.7%) on caps (contact angle <= 65 deg), ellipsoidal caps, yawed boxes and
  cylinders, centred or 12 cm off centre, on a table tilted by 5 deg. Limits: what the camera cannot
  see is not counted (an off-centre hemisphere hides ~2% of its volume behind its far side, measured
  -3% to -4%), and a box edge parallel to the pixel rows is only known to half a pixel along its
  whole length (+1.3% on a 72 mL box, up to +2.2% on a 24 mL one).
  Keeping the highest point per cell instead of the footprint mean biases sloped surfaces up by
  3-5% once cells are covered exactly.
* ``column``: ``sum(h * Z^2 / (fx * fy))``, each pixel's area at its own depth times its height.
  Biased: -3% to -12% on mounds (the footprint at the surface, not along the column), +5% to +15% on
  off-centre boxes (visible side walls count as columns); exact for a centred box.
* ``frustum``: ``sum((Z_table^3 - Z^3) / (3 fx fy))``, each pixel's viewing cone from the surface down
  to the table. Exact for surfaces that hide nothing (mounds, < 0.2%), too large where the object
  hides table behind it (boxes +4% to +21%, cylinders +6% to +21%).

Heights are clipped at 0 (nothing below the table counts). Invalid depth (NaN or 0) inside the mask is
never counted as 0 m: ``column`` and ``frustum`` fill it from the nearest valid masked pixel;
``heightmap`` lets the valid neighbours on both sides share the gap (a nearest-pixel fill would put
a top-surface depth on a side-wall ray and grow the footprint past the wall).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from n5k_hf.geometry.plane import Plane, bounding_box, fit_table_plane, pixel_directions, valid_depth

ML_PER_M3 = 1e6

MAX_GAP_NOMINAL_PIXELS = 10.0
"""Neighbours further apart on the plane than this many nominal pixel sizes are across a depth jump."""


@dataclass(frozen=True)
class ItemMeasurement:
    """Volume of one masked item, its mask area and the mean height of its pixels above the table."""

    volume_ml: float
    area_px: int
    mean_height_mm: float


def _check_inputs(
    depth_m: np.ndarray, mask: np.ndarray, K: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    depth_m = np.asarray(depth_m)
    mask = np.asarray(mask)
    if depth_m.ndim != 2:
        raise ValueError(f"depth_m must have shape (H, W), got {depth_m.shape}")
    if mask.shape != depth_m.shape:
        raise ValueError(f"mask shape {mask.shape} differs from depth_m shape {depth_m.shape}")
    if mask.dtype != bool:
        raise TypeError(f"mask must be a bool array, got dtype {mask.dtype}")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    return depth_m, mask, K


def _nearest_fill(values: np.ndarray, known: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Copy of (H, W) ``values`` where each ``wanted & ~known`` pixel takes its nearest ``known`` value.

    ``known`` must hold at least one pixel. Distances are Euclidean (OpenCV's 5x5 mask approximation).
    """
    filled = values.copy()
    holes = wanted & ~known
    if not holes.any():
        return filled
    # Each known pixel is a distinct zero of the transform; every other pixel gets its nearest's label.
    _, labels = cv2.distanceTransformWithLabels(
        (~known).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
    )
    label_to_value = np.zeros(int(labels.max()) + 1, dtype=values.dtype)
    label_to_value[labels[known]] = values[known]
    filled[holes] = label_to_value[labels[holes]]
    return filled


def fill_invalid_depth(depth_m: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) float64 depth where invalid (NaN or <= 0) pixels inside ``mask`` take the depth of the
    nearest valid pixel inside ``mask``; pixels outside the mask are returned unchanged.

    Works on the mask's bounding box only. A mask without any valid pixel is returned unfilled.
    """
    depth_m = np.asarray(depth_m, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    filled = depth_m.copy()
    valid = valid_depth(depth_m)
    if not mask.any() or not (mask & valid).any():
        return filled
    window = bounding_box(mask)
    window_mask = mask[window]
    filled[window] = _nearest_fill(depth_m[window], window_mask & valid[window], window_mask)
    return filled


def _masked_points(depth_m: np.ndarray, mask: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) rays (z = 1) and (N,) depths of the masked pixels with a (filled) valid depth."""
    pixels = np.flatnonzero(mask)
    rows, cols = np.divmod(pixels, mask.shape[1])
    depth_values = depth_m.ravel()[pixels]
    usable = valid_depth(depth_values)
    return pixel_directions(K, rows[usable], cols[usable]), depth_values[usable]


def _plane_axes(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit in-plane axes along which the image columns (``u``) and rows (``v``) run on the plane.

    The first is the camera x axis projected onto the plane, the second completes it so that both
    grow with ``u`` and ``v`` for a plane facing the camera (unless the plane is seen edge-on).
    """
    along_u = np.array([1.0, 0.0, 0.0]) - normal[0] * normal
    if np.linalg.norm(along_u) < 1e-6:  # a plane facing along the camera x axis
        along_u = np.array([0.0, 0.0, 1.0]) - normal[2] * normal
    along_u /= np.linalg.norm(along_u)
    along_v = np.cross(along_u, normal)
    if along_v[1] < 0:
        along_v = -along_v
    return along_u, along_v


@dataclass(frozen=True)
class _Raster:
    """Flat indices (N,) of the true pixels of an (h, w) bool array in raster order, with their rows
    and columns; computed once per integration and shared by the footprint steps."""

    pixels: np.ndarray
    rows: np.ndarray
    columns: np.ndarray
    width: int

    @classmethod
    def of(cls, usable: np.ndarray) -> _Raster:
        pixels = np.flatnonzero(usable)
        rows, columns = np.divmod(pixels, usable.shape[1])
        return cls(pixels, rows, columns, usable.shape[1])


def _linked_neighbours(
    usable: np.ndarray, mask: np.ndarray, axis: int, raster: _Raster | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Index along image ``axis`` of the previous and the next usable pixel of each usable pixel.

    Neighbours are searched in the same row (``axis`` 1) or column (``axis`` 0) within an unbroken
    run of the mask, skipping invalid pixels inside it; -1 where there is none.

    Args:
        usable: (h, w) bool pixels with a valid depth, inside (h, w) bool ``mask``.
        raster: `_Raster` of ``usable`` when already at hand.

    Returns:
        previous, following: (N,) int64 for the N usable pixels in raster order.
    """
    raster = _Raster.of(usable) if raster is None else raster
    if axis == 0:
        usable_t, mask_t = np.ascontiguousarray(usable.T), np.ascontiguousarray(mask.T)
        raster_t = _Raster.of(usable_t)
        previous_t, following_t = _linked_neighbours(usable_t, mask_t, 1, raster_t)
        # Back from the transposed raster order to the raster order of ``usable``.
        grid = np.empty(usable_t.shape, dtype=np.int64)
        grid.flat[raster_t.pixels] = previous_t
        previous = grid.T.ravel()[raster.pixels]
        grid.flat[raster_t.pixels] = following_t
        return previous, grid.T.ravel()[raster.pixels]
    rows, columns = raster.rows, raster.columns
    # Consecutive usable pixels in raster order are linked when they share a row and no pixel
    # outside the mask lies between them (the count of such pixels before each is the same).
    outside_before = np.cumsum(~mask.ravel(), dtype=np.int64)[raster.pixels]
    linked = (rows[1:] == rows[:-1]) & (outside_before[1:] == outside_before[:-1])
    previous = np.full(len(rows), -1, dtype=np.int64)
    following = np.full(len(rows), -1, dtype=np.int64)
    previous[1:] = np.where(linked, columns[:-1], -1)
    following[:-1] = np.where(linked, columns[1:], -1)
    return previous, following


def _footprint_half_gaps(
    coords_m: tuple[np.ndarray, np.ndarray],
    usable: np.ndarray,
    mask: np.ndarray,
    nominal_m: np.ndarray,
    axis: int,
    raster: _Raster | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plane vectors from each usable pixel halfway to its previous and next neighbour along ``axis``.

    A pixel owns the plane up to halfway to its neighbours along image ``axis`` (1 = columns,
    0 = rows): the nearest usable pixels on either side, skipping invalid pixels inside the mask (so
    holes in the depth are bridged by their neighbours). Where there is no neighbour (edge of the
    mask) or it lies across a depth jump (more than `MAX_GAP_NOMINAL_PIXELS` nominal pixels per
    step), the footprint mirrors the opposite half-gap per step; with neither, it is half the nominal
    pixel size along the plane axis that follows ``axis``. Visible walls map their pixels onto one
    line (zero gaps), so they add no footprint beyond the wall; hidden edges extend half a pixel
    beyond the last pixel.

    Args:
        coords_m: (h, w) plane coordinates of each pixel along the ``u`` and ``v`` plane axes.
        usable: (h, w) bool pixels with a valid depth in ``mask`` (h, w).
        nominal_m: (N,) nominal pixel size on the plane (depth / focal length) of the usable pixels.
        raster: `_Raster` of ``usable`` when already at hand.

    Returns:
        (before_u, before_v, after_u, after_v): (N,) components, for the usable pixels in raster
        order, of the half-gap vectors to the previous and the next neighbour.
    """
    raster = _Raster.of(usable) if raster is None else raster
    width, rows, columns = raster.width, raster.rows, raster.columns
    position = columns if axis == 1 else rows
    flat_u, flat_v = coords_m[0].ravel(), coords_m[1].ravel()
    centre_u, centre_v = flat_u[raster.pixels], flat_v[raster.pixels]
    halves = []
    for neighbour, sign in zip(_linked_neighbours(usable, mask, axis, raster), (-1.0, 1.0)):
        linked = neighbour >= 0
        neighbour = np.where(linked, neighbour, position)
        steps = np.maximum(np.abs(neighbour - position), 1)
        neighbour_pixels = rows * width + neighbour if axis == 1 else neighbour * width + columns
        gap_u = sign * (flat_u[neighbour_pixels] - centre_u) / 2.0
        gap_v = sign * (flat_v[neighbour_pixels] - centre_v) / 2.0
        max_gap_m = 0.5 * MAX_GAP_NOMINAL_PIXELS * nominal_m * steps
        linked &= gap_u * gap_u + gap_v * gap_v <= max_gap_m * max_gap_m
        gap_u[~linked] = np.nan
        gap_v[~linked] = np.nan
        halves.append((gap_u, gap_v, steps))
    (before_u, before_v, before_steps), (after_u, after_v, after_steps) = halves
    missing_before = np.isnan(before_u)
    missing_after = np.isnan(after_u)
    missing_both = missing_before & missing_after
    # A missing side mirrors the other side's half-gap per pixel step (not its bridge over a hole).
    for before, after, along_axis in ((before_u, after_u, axis == 1), (before_v, after_v, axis == 0)):
        before[missing_before] = (after / after_steps)[missing_before]
        after[missing_after] = (before / before_steps)[missing_after]
        before[missing_both] = after[missing_both] = nominal_m[missing_both] / 2.0 if along_axis else 0.0
    return before_u, before_v, after_u, after_v


def _cell_overlaps(
    low_m: np.ndarray, high_m: np.ndarray, cell_size_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """First cell index and number of cells ``[k c, (k + 1) c)`` that each interval ``[low, high)`` overlaps."""
    first = np.floor(low_m / cell_size_m).astype(np.int64)
    end = np.ceil(high_m / cell_size_m).astype(np.int64)
    return first, np.where(high_m > low_m, np.maximum(end - first, 1), 0)


def _expand(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owner index and cell index of every (interval, overlapped cell) pair."""
    owner = np.repeat(np.arange(len(count)), count)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
    return owner, first[owner] + rank


def _fill_footprint_holes(heights_m: np.ndarray, coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill the interior holes of the (rows, cols) cell footprint: full coverage, nearest covered height."""
    occupied = coverage > 0
    padded = np.pad(occupied, 1).astype(np.uint8)
    cv2.floodFill(padded, None, (0, 0), 1)
    holes = padded[1:-1, 1:-1] == 0
    if not holes.any():
        return heights_m, coverage
    return _nearest_fill(heights_m, occupied, holes), np.where(holes, 1.0, coverage)


def _pixel_footprints(
    coord_u_m: np.ndarray,
    coord_v_m: np.ndarray,
    usable: np.ndarray,
    mask: np.ndarray,
    depth_m: np.ndarray,
    K: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plane rectangle ``[low_u, high_u) x [low_v, high_v)`` owned by each usable pixel, each (N,).

    The rectangle follows the pixel's half-gaps to its neighbours along the plane axes, rescaled to
    the area of the parallelogram its neighbours span (perspective shears that away from the axes).
    Pixels are in the raster order of ``usable``.

    Args:
        coord_u_m, coord_v_m: (h, w) plane coordinates of the pixels; usable: (h, w) bool pixels
        with a valid depth in ``mask`` (h, w); depth_m: (h, w) depth in metres.
    """
    raster = _Raster.of(usable)
    pixels = raster.pixels
    usable_depth_m = depth_m.ravel()[pixels]
    coords_m = (coord_u_m, coord_v_m)
    before_uu, before_uv, after_uu, after_uv = _footprint_half_gaps(
        coords_m, usable, mask, usable_depth_m / K[0, 0], 1, raster
    )
    before_vu, before_vv, after_vu, after_vv = _footprint_half_gaps(
        coords_m, usable, mask, usable_depth_m / K[1, 1], 0, raster
    )
    lower_u, upper_u = np.maximum(before_uu, 0.0), np.maximum(after_uu, 0.0)
    lower_v, upper_v = np.maximum(before_vv, 0.0), np.maximum(after_vv, 0.0)
    parallelogram_m2 = np.abs(
        (before_uu + after_uu) * (before_vv + after_vv) - (before_uv + after_uv) * (before_vu + after_vu)
    )
    rectangle_m2 = (lower_u + upper_u) * (lower_v + upper_v)
    has_area = rectangle_m2 > 0
    scale = np.where(has_area, np.sqrt(parallelogram_m2 / np.where(has_area, rectangle_m2, 1.0)), 1.0)
    centre_u, centre_v = coord_u_m.ravel()[pixels], coord_v_m.ravel()[pixels]
    return (
        centre_u - scale * lower_u,
        centre_u + scale * upper_u,
        centre_v - scale * lower_v,
        centre_v + scale * upper_v,
    )


def _rasterise_footprints(
    low_u: np.ndarray,
    high_u: np.ndarray,
    low_v: np.ndarray,
    high_v: np.ndarray,
    heights_m: np.ndarray,
    cell_size_m: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell grid of (N,) rectangles with heights: (rows, cols) mean height and covered fraction.

    A cell's height is the overlap-weighted mean height of the rectangles over it (exact for the
    step surface they form) and its coverage is their overlap area over the cell area, at most 1.
    """
    first_col, n_cols = _cell_overlaps(low_u, high_u, cell_size_m)
    first_row, n_rows = _cell_overlaps(low_v, high_v, cell_size_m)
    col_origin, row_origin = first_col.min(), first_row.min()
    grid_shape = (int((first_row + n_rows).max() - row_origin), int((first_col + n_cols).max() - col_origin))
    # (pixel, cell) pairs: expand rows, then columns within each (pixel, row) pair.
    pixel_of_row, cell_rows = _expand(first_row, n_rows)
    # The overlap along v depends on the (pixel, row) pair only: computed before the column expansion.
    overlap_v = np.minimum(high_v[pixel_of_row], (cell_rows + 1) * cell_size_m) - np.maximum(
        low_v[pixel_of_row], cell_rows * cell_size_m
    )
    pair_of_col, cell_cols = _expand(first_col[pixel_of_row], n_cols[pixel_of_row])
    pixel = pixel_of_row[pair_of_col]
    cell_rows = cell_rows[pair_of_col]
    overlap_u = np.minimum(high_u[pixel], (cell_cols + 1) * cell_size_m) - np.maximum(
        low_u[pixel], cell_cols * cell_size_m
    )
    overlap_m2 = np.maximum(overlap_u, 0.0) * np.maximum(overlap_v, 0.0)[pair_of_col]
    flat_cells = (cell_rows - row_origin) * grid_shape[1] + (cell_cols - col_origin)
    n_cells = grid_shape[0] * grid_shape[1]
    covered_m2 = np.bincount(flat_cells, weights=overlap_m2, minlength=n_cells)
    height_sums = np.bincount(flat_cells, weights=overlap_m2 * heights_m[pixel], minlength=n_cells)
    mean_heights_m = height_sums / np.where(covered_m2 > 0, covered_m2, 1.0)
    coverage = np.minimum(covered_m2 / cell_size_m**2, 1.0)
    return mean_heights_m.reshape(grid_shape), coverage.reshape(grid_shape)


def _heightmap_volume_ml(
    depth_m: np.ndarray, mask: np.ndarray, K: np.ndarray, plane: Plane, cell_size_m: float
) -> float:
    window = bounding_box(mask)
    window_depth_m = depth_m[window]
    usable = mask[window] & valid_depth(window_depth_m)
    if not usable.any():
        return 0.0
    # A point's component along a unit vector a is Z * (a . K^-1 (u, v, 1)): linear in u and v, so
    # each (h, w) coordinate map is the depth times an outer sum (no (h, w, 3) point cloud).
    rows = np.arange(window[0].start, window[0].stop, dtype=np.float64)[:, None]
    cols = np.arange(window[1].start, window[1].stop, dtype=np.float64)[None, :]
    K_inv = np.linalg.inv(K)
    along_u, along_v = _plane_axes(plane.normal)
    usable_depth_m = np.where(usable, window_depth_m, 0.0)

    def along(axis: np.ndarray) -> np.ndarray:
        a_u, a_v, a_1 = axis @ K_inv
        return usable_depth_m * ((a_u * cols + a_1) + a_v * rows)

    coord_u_m = along(along_u)
    coord_v_m = along(along_v)
    heights_m = np.maximum(along(plane.normal)[usable] + plane.offset_m, 0.0)
    footprints = _pixel_footprints(coord_u_m, coord_v_m, usable, mask[window], window_depth_m, K)
    if not np.any(footprints[1] > footprints[0]):
        return 0.0
    grid_heights_m, coverage = _rasterise_footprints(*footprints, heights_m, cell_size_m)
    grid_heights_m, coverage = _fill_footprint_holes(grid_heights_m, coverage)
    return float((grid_heights_m * coverage).sum() * cell_size_m**2 * ML_PER_M3)


def _column_volume_ml(
    depth_m: np.ndarray, mask: np.ndarray, K: np.ndarray, plane: Plane, cell_size_m: float
) -> float:
    rays, depth_values = _masked_points(fill_invalid_depth(depth_m, mask), mask, K)
    heights_m = np.maximum((rays @ plane.normal) * depth_values + plane.offset_m, 0.0)
    pixel_area_m2 = depth_values**2 / (K[0, 0] * K[1, 1])
    return float(np.sum(heights_m * pixel_area_m2) * ML_PER_M3)


def _frustum_volume_ml(
    depth_m: np.ndarray, mask: np.ndarray, K: np.ndarray, plane: Plane, cell_size_m: float
) -> float:
    rays, depth_values = _masked_points(fill_invalid_depth(depth_m, mask), mask, K)
    ray_dot_normal = rays @ plane.normal
    # Depth where the pixel's ray meets the plane; rays that never reach it (n . r >= 0) add nothing.
    meets_plane = ray_dot_normal < 0
    table_depth_m = np.where(meets_plane, -plane.offset_m / np.where(meets_plane, ray_dot_normal, -1.0), 0.0)
    frustum_m3 = np.maximum(table_depth_m**3 - depth_values**3, 0.0) / (3.0 * K[0, 0] * K[1, 1])
    return float(np.sum(np.where(meets_plane, frustum_m3, 0.0)) * ML_PER_M3)


VolumeMethod = Callable[[np.ndarray, np.ndarray, np.ndarray, Plane, float], float]

VOLUME_METHODS: dict[str, VolumeMethod] = {
    "heightmap": _heightmap_volume_ml,
    "column": _column_volume_ml,
    "frustum": _frustum_volume_ml,
}
"""Volume integrators by name: ``fn(depth_m, mask, K, plane, cell_size_m) -> volume_ml``.

``depth_m`` may hold invalid pixels (NaN or <= 0): ``column`` and ``frustum`` fill those inside the
mask with `fill_invalid_depth`; ``heightmap`` bridges them with the footprints of their neighbours.
"""


def _volume_method(method: str) -> VolumeMethod:
    if method not in VOLUME_METHODS:
        raise ValueError(
            f"unknown volume method {method!r}; valid methods: {', '.join(sorted(VOLUME_METHODS))}"
        )
    return VOLUME_METHODS[method]


def integrate_volume_ml(
    depth_m: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    method: str = "heightmap",
    *,
    plane: Plane | None = None,
    cell_size_m: float = 1e-3,
) -> float:
    """Volume in millilitres between the depth surface inside ``mask`` and the table plane.

    Args:
        depth_m: (H, W) depth in metres, NaN or 0 = invalid.
        mask: (H, W) bool food mask.
        K: (3, 3) intrinsics of the depth map.
        method: a key of `VOLUME_METHODS`.
        plane: the table plane; fitted with `fit_table_plane` on a ring around ``mask`` when None.
        cell_size_m: cell edge of the ``heightmap`` grid (ignored by the other methods).

    Returns:
        A finite volume >= 0 (0 for an empty mask or a mask without any valid depth).
    """
    depth_m, mask, K = _check_inputs(depth_m, mask, K)
    integrate = _volume_method(method)
    if not cell_size_m > 0:
        raise ValueError(f"cell_size_m must be positive, got {cell_size_m}")
    if not mask.any():
        return 0.0
    if plane is None:
        plane = fit_table_plane(depth_m, K, mask)
    return integrate(depth_m, mask, K, plane, cell_size_m)


def measure_food_item(
    depth_m: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    plane: Plane,
    method: str = "heightmap",
    *,
    cell_size_m: float = 1e-3,
) -> ItemMeasurement:
    """Volume (`integrate_volume_ml` with ``method``), mask area and mean pixel height of one item.

    ``mean_height_mm`` averages the clipped heights of the masked pixels with a (filled) valid depth;
    0 when there is none.
    """
    depth_m, mask, K = _check_inputs(depth_m, mask, K)
    volume_ml = integrate_volume_ml(depth_m, mask, K, method, plane=plane, cell_size_m=cell_size_m)
    rays, depth_values = _masked_points(fill_invalid_depth(depth_m, mask), mask, K)
    heights_m = np.maximum((rays @ plane.normal) * depth_values + plane.offset_m, 0.0)
    mean_height_mm = float(heights_m.mean() * 1e3) if len(heights_m) else 0.0
    return ItemMeasurement(volume_ml=volume_ml, area_px=int(mask.sum()), mean_height_mm=mean_height_mm)
