"""Analytic table-top scenes ray-cast exactly into a depth map, with closed-form volumes.

A `Scene` is a flat table seen from a pinhole camera ``camera_height_m`` above it (optionally tilted
about a horizontal axis) plus solids standing on the table or on a support (plate, bowl). Each
pixel's ray is intersected in closed form with every surface and the nearest hit is kept, so the
depth map is exact up to float32 rounding and each solid's ``volume_ml`` is the ground truth that a
volume integrator must recover.

Table frame (metres): origin at the foot of the perpendicular from the camera centre to the table,
``z`` = height above the table (towards the camera), ``x``/``y`` in the table plane. Untilted, table
``x`` is image right and table ``y`` is image up (right-handed, so ``x × y = z``). A solid's
``center_x_m``/``center_y_m`` place it in that plane and ``base_height_m`` is the height it stands
on: 0 on the table, ``plate.support_height_m`` on a plate, ``bowl.support_height_m`` in a bowl.
Camera frame and pixel convention are those of docs/architecture.md (x right, y down, z forward;
pixel ``(u, v)`` has its centre at ``(u, v)``). Rays are ``((u - cx) / fx, (v - cy) / fy, 1)``, so the
ray parameter of a hit is the depth ``Z`` itself.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

import numpy as np

from n5k_hf.geometry.intrinsics import NUTRITION5K_CAMERA_HEIGHT_M
from n5k_hf.geometry.plane import Plane

ML_PER_M3 = 1e6
TABLE_OBJECT_ID = 0
NO_HIT_OBJECT_ID = -1
MAX_TILT_DEG = 45.0


class Solid(abc.ABC):
    """A closed solid standing on a horizontal surface at height ``base_height_m`` above the table."""

    center_x_m: float
    center_y_m: float
    base_height_m: float

    is_support: bool = False
    """True for plates and bowls: surfaces food stands on, not food."""

    @property
    @abc.abstractmethod
    def volume_ml(self) -> float:
        """Exact volume of the solid in millilitres."""

    @property
    @abc.abstractmethod
    def top_height_m(self) -> float:
        """Height of the solid's highest point above the table in metres."""

    @property
    @abc.abstractmethod
    def footprint_radius_m(self) -> float:
        """Radius of a vertical cylinder around ``(center_x_m, center_y_m)`` that contains the solid."""

    def bounding_box_table_m(self) -> np.ndarray:
        """(2, 3) lower and upper corners of a table-frame box that contains the solid."""
        radius = self.footprint_radius_m
        return np.array(
            [
                [self.center_x_m - radius, self.center_y_m - radius, self.base_height_m],
                [self.center_x_m + radius, self.center_y_m + radius, self.top_height_m],
            ]
        )

    @abc.abstractmethod
    def intersect(self, origin_m: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Ray parameter of the first hit with the solid's visible surface.

        Args:
            origin_m: (3,) ray origin in table coordinates (the camera centre).
            directions: (N, 3) ray directions in table coordinates (not normalised).

        Returns:
            (N,) float64 ray parameter ``t > 0`` of the nearest hit, ``inf`` where the ray misses.
        """

    def _local_origin(self, origin_m: np.ndarray, z0_m: float) -> np.ndarray:
        return np.asarray(origin_m, dtype=np.float64) - np.array([self.center_x_m, self.center_y_m, z0_m])


def _check_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{owner}: {name} must be a positive finite number, got {value!r}")


def _yaw_rotate(vectors: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Express (..., 3) vectors in a frame rotated by ``yaw_deg`` about the table normal."""
    if yaw_deg == 0.0:
        return vectors
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    rotated = np.array(vectors, dtype=np.float64, copy=True)
    rotated[..., 0] = c * vectors[..., 0] + s * vectors[..., 1]
    rotated[..., 1] = -s * vectors[..., 0] + c * vectors[..., 1]
    return rotated


def _first_valid(t: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid & (t > 0), t, np.inf)


def _ellipsoid_cap_hit(
    origin_local: np.ndarray,
    directions: np.ndarray,
    semi_axes_m: tuple[float, float, float],
    cut_height_m: float,
) -> np.ndarray:
    """First hit with an ellipsoid centred at the local origin, kept only at ``z >= cut_height_m``.

    The rays come from above the cut plane, so the flat base of the cap is never the first surface
    seen from the camera (the support under it is nearer); only the curved surface is intersected.
    """
    scale = 1.0 / np.asarray(semi_axes_m, dtype=np.float64)
    o = origin_local * scale
    d = directions * scale
    a = np.einsum("ij,ij->i", d, d)
    b = 2.0 * (d @ o)
    c = float(o @ o) - 1.0
    disc = b * b - 4.0 * a * c
    hit = disc >= 0.0
    t_near = (-b - np.sqrt(np.where(hit, disc, 0.0))) / (2.0 * a)
    z_near = origin_local[2] + t_near * directions[:, 2]
    return _first_valid(t_near, hit & (z_near >= cut_height_m))


def _vertical_cylinder_interval(
    origin_local: np.ndarray, directions: np.ndarray, radius_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit ray parameters of an infinite vertical cylinder around the local z axis."""
    dx, dy = directions[:, 0], directions[:, 1]
    a = dx * dx + dy * dy
    b = 2.0 * (origin_local[0] * dx + origin_local[1] * dy)
    c = origin_local[0] ** 2 + origin_local[1] ** 2 - radius_m**2
    vertical = a == 0.0
    safe_a = np.where(vertical, 1.0, a)
    disc = b * b - 4.0 * safe_a * c
    crosses = ~vertical & (disc >= 0.0)
    root = np.sqrt(np.where(crosses, disc, 0.0))
    t_in = np.where(crosses, (-b - root) / (2.0 * safe_a), np.inf)
    t_out = np.where(crosses, (-b + root) / (2.0 * safe_a), -np.inf)
    # A vertical ray is inside the cylinder for all t or never.
    t_in = np.where(vertical, -np.inf if c <= 0.0 else np.inf, t_in)
    t_out = np.where(vertical, np.inf if c <= 0.0 else -np.inf, t_out)
    return t_in, t_out


def _slab_interval(
    origin_coord: float, direction_coord: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit ray parameters of the slab ``low <= coord <= high`` along one axis."""
    parallel = direction_coord == 0.0
    safe_d = np.where(parallel, 1.0, direction_coord)
    t_low = (low - origin_coord) / safe_d
    t_high = (high - origin_coord) / safe_d
    t_in = np.minimum(t_low, t_high)
    t_out = np.maximum(t_low, t_high)
    inside = low <= origin_coord <= high
    t_in = np.where(parallel, -np.inf if inside else np.inf, t_in)
    t_out = np.where(parallel, np.inf if inside else -np.inf, t_out)
    return t_in, t_out


def _convex_entry(t_in: np.ndarray, t_out: np.ndarray) -> np.ndarray:
    return _first_valid(t_in, t_in <= t_out)


@dataclass(frozen=True)
class SphericalCap(Solid):
    """Cap of a sphere of ``radius_m`` cut by its support, ``height_m`` tall (``<= 2 * radius_m``).

    ``height_m == radius_m`` is a hemisphere; volume ``pi * h^2 * (3 R - h) / 3``.
    """

    radius_m: float
    height_m: float
    center_x_m: float = 0.0
    center_y_m: float = 0.0
    base_height_m: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("SphericalCap", radius_m=self.radius_m, height_m=self.height_m)
        if self.height_m > 2.0 * self.radius_m:
            raise ValueError(
                f"SphericalCap: height_m {self.height_m} exceeds the diameter {2 * self.radius_m}"
            )

    @property
    def volume_ml(self) -> float:
        h, r = self.height_m, self.radius_m
        return math.pi * h * h * (3.0 * r - h) / 3.0 * ML_PER_M3

    @property
    def top_height_m(self) -> float:
        return self.base_height_m + self.height_m

    @property
    def footprint_radius_m(self) -> float:
        return self.radius_m

    def intersect(self, origin_m: np.ndarray, directions: np.ndarray) -> np.ndarray:
        centre_z = self.base_height_m + self.height_m - self.radius_m
        origin_local = self._local_origin(origin_m, centre_z)
        r = self.radius_m
        return _ellipsoid_cap_hit(origin_local, directions, (r, r, r), self.radius_m - self.height_m)


@dataclass(frozen=True)
class EllipsoidalCap(Solid):
    """Cap of an ellipsoid with semi-axes ``a_m``, ``b_m`` (in-plane) and ``c_m`` (vertical).

    The cap is ``height_m`` tall (default ``c_m``: a half-ellipsoid; at most ``2 * c_m``), rotated by
    ``yaw_deg`` about the table normal. Volume ``pi * a * b * h^2 * (3 c - h) / (3 c^2)``.
    """

    a_m: float
    b_m: float
    c_m: float
    height_m: float | None = None
    center_x_m: float = 0.0
    center_y_m: float = 0.0
    base_height_m: float = 0.0
    yaw_deg: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("EllipsoidalCap", a_m=self.a_m, b_m=self.b_m, c_m=self.c_m)
        _check_positive("EllipsoidalCap", height_m=self.cap_height_m)
        if self.cap_height_m > 2.0 * self.c_m:
            raise ValueError(f"EllipsoidalCap: height_m {self.cap_height_m} exceeds 2 * c_m = {2 * self.c_m}")

    @property
    def cap_height_m(self) -> float:
        return self.c_m if self.height_m is None else self.height_m

    @property
    def volume_ml(self) -> float:
        h, c = self.cap_height_m, self.c_m
        return math.pi * self.a_m * self.b_m * h * h * (3.0 * c - h) / (3.0 * c * c) * ML_PER_M3

    @property
    def top_height_m(self) -> float:
        return self.base_height_m + self.cap_height_m

    @property
    def footprint_radius_m(self) -> float:
        return max(self.a_m, self.b_m)

    def intersect(self, origin_m: np.ndarray, directions: np.ndarray) -> np.ndarray:
        centre_z = self.base_height_m + self.cap_height_m - self.c_m
        origin_local = _yaw_rotate(self._local_origin(origin_m, centre_z), self.yaw_deg)
        local_directions = _yaw_rotate(directions, self.yaw_deg)
        return _ellipsoid_cap_hit(
            origin_local, local_directions, (self.a_m, self.b_m, self.c_m), self.c_m - self.cap_height_m
        )


@dataclass(frozen=True)
class Box(Solid):
    """Rectangular box ``size_x_m`` x ``size_y_m`` x ``size_z_m`` rotated by ``yaw_deg`` about the normal."""

    size_x_m: float
    size_y_m: float
    size_z_m: float
    center_x_m: float = 0.0
    center_y_m: float = 0.0
    base_height_m: float = 0.0
    yaw_deg: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("Box", size_x_m=self.size_x_m, size_y_m=self.size_y_m, size_z_m=self.size_z_m)

    @property
    def volume_ml(self) -> float:
        return self.size_x_m * self.size_y_m * self.size_z_m * ML_PER_M3

    @property
    def top_height_m(self) -> float:
        return self.base_height_m + self.size_z_m

    @property
    def footprint_radius_m(self) -> float:
        return 0.5 * math.hypot(self.size_x_m, self.size_y_m)

    def intersect(self, origin_m: np.ndarray, directions: np.ndarray) -> np.ndarray:
        origin_local = _yaw_rotate(self._local_origin(origin_m, self.base_height_m), self.yaw_deg)
        local_directions = _yaw_rotate(directions, self.yaw_deg)
        t_in = np.full(len(directions), -np.inf)
        t_out = np.full(len(directions), np.inf)
        bounds = ((-self.size_x_m / 2, self.size_x_m / 2), (-self.size_y_m / 2, self.size_y_m / 2))
        for axis, (low, high) in enumerate((*bounds, (0.0, self.size_z_m))):
            axis_in, axis_out = _slab_interval(origin_local[axis], local_directions[:, axis], low, high)
            t_in = np.maximum(t_in, axis_in)
            t_out = np.minimum(t_out, axis_out)
        return _convex_entry(t_in, t_out)


@dataclass(frozen=True)
class Cylinder(Solid):
    """Upright circular cylinder of ``radius_m`` and ``height_m``."""

    radius_m: float
    height_m: float
    center_x_m: float = 0.0
    center_y_m: float = 0.0
    base_height_m: float = 0.0

    def __post_init__(self) -> None:
        _check_positive(type(self).__name__, radius_m=self.radius_m, height_m=self.height_m)

    @property
    def volume_ml(self) -> float:
        return math.pi * self.radius_m**2 * self.height_m * ML_PER_M3

    @property
    def top_height_m(self) -> float:
        return self.base_height_m + self.height_m

    @property
    def footprint_radius_m(self) -> float:
        return self.radius_m

    def intersect(self, origin_m: np.ndarray, directions: np.ndarray) -> np.ndarray:
        origin_local = self._local_origin(origin_m, self.base_height_m)
        side_in, side_out = _vertical_cylinder_interval(origin_local, directions, self.radius_m)
        z_in, z_out = _slab_interval(origin_local[2], directions[:, 2], 0.0, self.height_m)
        return _convex_entry(np.maximum(side_in, z_in), np.minimum(side_out, z_out))


@dataclass(frozen=True)
class Plate(Cylinder):
    """A flat disc (support): food on it stands at ``support_height_m``.

    Typical plate: ``radius_m`` 0.10-0.13, ``height_m`` 0.010-0.015.
    """

    is_support: bool = field(default=True, init=False)

    @property
    def support_height_m(self) -> float:
        """Height above the table of the plate's top, where food placed on it stands."""
        return self.top_height_m


@dataclass(frozen=True)
class Bowl(Solid):
    """A bowl (support): an annular wall plus a flat floor, food stands on the floor.

    The wall spans ``inner_radius_m``..``outer_radius_m`` radially and ``height_m`` vertically from
    the base; the floor fills the inside up to ``floor_thickness_m``.
    """

    inner_radius_m: float
    outer_radius_m: float
    height_m: float
    floor_thickness_m: float = 0.005
    center_x_m: float = 0.0
    center_y_m: float = 0.0
    base_height_m: float = 0.0
    is_support: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        _check_positive(
            "Bowl",
            inner_radius_m=self.inner_radius_m,
            outer_radius_m=self.outer_radius_m,
            height_m=self.height_m,
            floor_thickness_m=self.floor_thickness_m,
        )
        if self.inner_radius_m >= self.outer_radius_m:
            raise ValueError(
                f"Bowl: inner_radius_m {self.inner_radius_m} must be below outer_radius_m {self.outer_radius_m}"
            )
        if self.floor_thickness_m >= self.height_m:
            raise ValueError(
                f"Bowl: floor_thickness_m {self.floor_thickness_m} must be below height_m {self.height_m}"
            )

    @property
    def support_height_m(self) -> float:
        """Height above the table of the bowl's floor, where food placed in it stands."""
        return self.base_height_m + self.floor_thickness_m

    @property
    def volume_ml(self) -> float:
        ring_area_m2 = math.pi * (self.outer_radius_m**2 - self.inner_radius_m**2)
        floor_area_m2 = math.pi * self.inner_radius_m**2
        return (ring_area_m2 * self.height_m + floor_area_m2 * self.floor_thickness_m) * ML_PER_M3

    @property
    def top_height_m(self) -> float:
        return self.base_height_m + self.height_m

    @property
    def footprint_radius_m(self) -> float:
        return self.outer_radius_m

    def intersect(self, origin_m: np.ndarray, directions: np.ndarray) -> np.ndarray:
        origin_local = self._local_origin(origin_m, self.base_height_m)
        dz = directions[:, 2]
        outer_in, outer_out = _vertical_cylinder_interval(origin_local, directions, self.outer_radius_m)
        inner_in, inner_out = _vertical_cylinder_interval(origin_local, directions, self.inner_radius_m)
        wall_z_in, wall_z_out = _slab_interval(origin_local[2], dz, 0.0, self.height_m)
        # Wall = (outer cylinder minus inner cylinder) within the wall slab: enter through the rim or
        # the outer side, or from the hollow through the inner side.
        outside_entry = _convex_entry(np.maximum(outer_in, wall_z_in), np.minimum(outer_out, wall_z_out))
        entered = np.isfinite(outside_entry)
        entry_xy = origin_local[:2] + np.where(entered, outside_entry, 0.0)[:, None] * directions[:, :2]
        in_hole = np.einsum("ij,ij->i", entry_xy, entry_xy) < self.inner_radius_m**2
        outside_entry = np.where(entered & in_hole, np.inf, outside_entry)
        z_inner_exit = origin_local[2] + inner_out * dz
        inner_wall = np.isfinite(inner_out) & (z_inner_exit >= 0.0) & (z_inner_exit <= self.height_m)
        inner_wall_hit = _first_valid(inner_out, inner_wall)
        floor_z_in, floor_z_out = _slab_interval(origin_local[2], dz, 0.0, self.floor_thickness_m)
        floor_hit = _convex_entry(np.maximum(inner_in, floor_z_in), np.minimum(inner_out, floor_z_out))
        return np.minimum(np.minimum(outside_entry, inner_wall_hit), floor_hit)


@dataclass(frozen=True)
class Scene:
    """A table seen from ``camera_height_m`` above it, with ``solids`` (object ids 1, 2, ... in order).

    ``tilt_deg`` rotates the table about the horizontal axis at ``tilt_axis_deg`` from table ``x``
    (towards table ``y``); the camera stays ``camera_height_m`` from the plane. ``table_half_size_m``
    bounds the table to a square (rays past it hit nothing); the default is an infinite table.
    """

    solids: tuple[Solid, ...] = ()
    camera_height_m: float = NUTRITION5K_CAMERA_HEIGHT_M
    tilt_deg: float = 0.0
    tilt_axis_deg: float = 0.0
    table_half_size_m: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "solids", tuple(self.solids))
        _check_positive("Scene", camera_height_m=self.camera_height_m)
        if not self.table_half_size_m > 0:
            raise ValueError(
                f"Scene: table_half_size_m must be positive (inf = no edge), got {self.table_half_size_m}"
            )
        if not 0.0 <= self.tilt_deg <= MAX_TILT_DEG:
            raise ValueError(f"Scene: tilt_deg must be within [0, {MAX_TILT_DEG}], got {self.tilt_deg}")
        for index, solid in enumerate(self.solids):
            if not isinstance(solid, Solid):
                raise TypeError(f"Scene: solids[{index}] is a {type(solid).__name__}, not a Solid")

    def table_to_camera_rotation(self) -> np.ndarray:
        """(3, 3) matrix whose columns are the table's x, y and normal axes in camera coordinates."""
        untilted = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
        angle = math.radians(self.tilt_deg)
        axis_angle = math.radians(self.tilt_axis_deg)
        axis = untilted @ np.array([math.cos(axis_angle), math.sin(axis_angle), 0.0])
        cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        tilt = np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * (cross @ cross)
        return tilt @ untilted

    def table_to_camera(self, points_table_m: np.ndarray) -> np.ndarray:
        """Map (..., 3) table-frame points to (..., 3) camera-frame points, in metres."""
        rotation = self.table_to_camera_rotation()
        camera_position_table = np.array([0.0, 0.0, self.camera_height_m])
        return (np.asarray(points_table_m, dtype=np.float64) - camera_position_table) @ rotation.T

    def plane_array(self) -> np.ndarray:
        """(4,) float64 ``(nx, ny, nz, d)`` of the table in camera coordinates (``n`` towards the camera)."""
        normal = self.table_to_camera_rotation()[:, 2]
        return np.array([*normal, self.camera_height_m])

    def table_plane(self) -> Plane:
        """The table as a `Plane` in camera coordinates."""
        return Plane.from_array(self.plane_array())

    def food_object_ids(self) -> list[int]:
        """Object ids (1-based) of the solids that are food, i.e. not plates or bowls."""
        return [index + 1 for index, solid in enumerate(self.solids) if not solid.is_support]

    def food_volume_ml(self) -> float:
        """Sum of the analytic volumes of the food solids, in millilitres."""
        return float(sum(solid.volume_ml for solid in self.solids if not solid.is_support))


def pixel_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) camera-frame rays ``((u - cx) / fx, (v - cy) / fy, 1)`` through the pixel centres."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"pixel_rays: K must have shape (3, 3), got {K.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"pixel_rays: image size must be positive, got {height}x{width}")
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1)
    return pixels @ np.linalg.inv(K).T


def _pixel_window(
    scene: Scene, solid: Solid, K: np.ndarray, height: int, width: int
) -> tuple[slice, slice] | None:
    """Rows and columns of the image that can see ``solid``: the bounding box of its projected box.

    Falls back to the whole image when a corner of the box is not in front of the camera.
    """
    low, high = solid.bounding_box_table_m()
    corners = np.array(
        [[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])]
    )
    corners_camera = scene.table_to_camera(corners)
    if np.any(corners_camera[:, 2] <= 0.0):
        return slice(0, height), slice(0, width)
    pixels = corners_camera @ K.T
    u = pixels[:, 0] / pixels[:, 2]
    v = pixels[:, 1] / pixels[:, 2]
    u0, u1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, width)
    v0, v1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return slice(v0, v1), slice(u0, u1)


def raycast_depth_m(scene: Scene, K: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast ``scene`` through a pinhole camera.

    Args:
        scene: the table and solids.
        K: (3, 3) intrinsics in pixels for an image of ``height`` x ``width``.
        height, width: image size in pixels.

    Returns:
        depth_m: (H, W) float32 depth along the optical axis in metres, NaN where nothing is hit.
        object_id: (H, W) int32, 0 = table, 1.. = ``scene.solids`` in order, -1 = nothing.
    """
    K = np.asarray(K, dtype=np.float64)
    rays_camera = pixel_rays(K, height, width)
    directions = rays_camera @ scene.table_to_camera_rotation()  # camera -> table frame (orthonormal)
    origin = np.array([0.0, 0.0, scene.camera_height_m])

    dz = directions[..., 2]
    downward = dz < 0.0
    nearest_t = np.where(downward, -origin[2] / np.where(downward, dz, -1.0), np.inf)
    if math.isfinite(scene.table_half_size_m):
        table_xy = origin[:2] + nearest_t[..., None] * directions[..., :2]
        off_table = np.any(np.abs(table_xy) > scene.table_half_size_m, axis=-1)
        nearest_t[off_table] = np.inf
    object_id = np.where(np.isfinite(nearest_t), TABLE_OBJECT_ID, NO_HIT_OBJECT_ID).astype(np.int32)

    for index, solid in enumerate(scene.solids):
        window = _pixel_window(scene, solid, K, height, width)
        if window is None:
            continue
        window_directions = directions[window]
        t_solid = solid.intersect(origin, window_directions.reshape(-1, 3)).reshape(
            window_directions.shape[:2]
        )
        closer = t_solid < nearest_t[window]
        nearest_t[window][closer] = t_solid[closer]
        object_id[window][closer] = index + 1

    depth_m = np.where(np.isfinite(nearest_t), nearest_t, np.nan).astype(np.float32)
    return depth_m, object_id
