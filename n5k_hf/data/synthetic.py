"""Synthetic Nutrition5k: ray-cast overhead RGB-D dishes with analytic food volumes, in the real layout.

Each dish is an analytic `Scene` (``n5k_hf.data.scenes``): a table about 0.359 m below the camera
(a few mm of jitter, tilted up to 3 degrees), one support (a flat plate or a bowl with a wall and a
flat floor) and 1 to 4 food solids (spherical caps, ellipsoidal caps, boxes, cylinders) of 20-400 mL
in total, standing on the support. The depth is ray-cast exactly, then degraded like the RealSense
D435 of Nutrition5k: Gaussian noise (about 1 mm at 0.359 m, growing with depth squared; partly
spatially correlated, as stereo matching noise is), 0-valued dropout speckles (1-3% of pixels) and
dropout at depth discontinuities, at steep surfaces and on dark food, and 0 beyond 0.4 m (the
real files hold nothing above 4000 units). The RGB image is Lambertian shading of per-object
textured albedo, lit by one directional light plus ambient, so the shape is visible in the picture.

Ground-truth volume (what ``volume_ml`` means): the sum of the analytic volumes of the food solids,
which is exactly the volume between the food surface and the flat support surface it stands on (the
plate's top, or the bowl's floor). The generator makes this the volume that a plane-fit integrator
measures: food items never intersect each other or the support (every item stands on the support
surface, with gaps between footprints wide enough that no item hides another from the camera), and
every pixel of the plane-fitting ring around the food mask (`n5k_hf.geometry.plane.table_ring_mask`,
10-40 px) sees the flat support surface, never the table, the plate's edge or the bowl's wall; a
layout that breaks this is redrawn. So `integrate_volume_ml(depth_m, food_mask, K, "heightmap")`, whose
plane is fitted on that ring, recovers ``volume_ml``. ``volume_above_table_ml`` adds the support slab
under the food footprints (plate thickness or bowl floor times the footprint areas): the volume a
measurement that uses the TABLE plane would report.

Files written by `make_synthetic_nutrition5k` (the real layout, see ``n5k_hf.data.nutrition5k``)::

    imagery/realsense_overhead/dish_<id>/rgb.png          8-bit RGB, 640x480
    imagery/realsense_overhead/dish_<id>/depth_raw.png    uint16, 1e-4 m, 0 = no reading
    imagery/realsense_overhead/dish_<id>/depth_color.png  depth 0.25-0.40 m through a colour map
    dish_ids/splits/{depth,rgb}_{train,test}_ids.txt       (rgb splits equal the depth splits)
    dish_ids/dish_ids_{all,cafe1,cafe2}.txt
    metadata/dish_metadata_cafe1.csv   real format: no header, 6 fields + 7 per ingredient
    metadata/dish_metadata_cafe2.csv   empty (every synthetic dish is "cafe 1")
    metadata/ingredients_metadata.csv  header ingr,id,cal/g,fat(g),carb(g),protein(g)
    ground_truth/masks/dish_<id>.png   uint8 labels: 0 background (table, plate, bowl), 1..n food items
    ground_truth/volumes.csv           see VOLUMES_CSV_HEADER
    ground_truth/camera.json           K (3x3, pixels) and image size

``volumes.csv`` columns: ``dish_id``; ``volume_ml`` (analytic food volume, above); ``num_items``;
``item_volumes_ml`` (per item, ``;``-separated, in label order 1..n); ``volume_above_table_ml``;
``support`` (``plate`` or ``bowl``); ``support_height_mm`` (support surface above the table);
``support_plane`` and ``table_plane`` (``nx ny nz d`` in camera coordinates, metres, ``n . p + d = 0``
with ``n`` towards the camera; ``volume_ml`` is measured from ``support_plane``).

Masses: item volume times a bulk density per food type; calories and macros: grams times the
per-gram values of the matching Nutrition5k ingredient (``ingredients_metadata.csv``).

Determinism: dish ``k`` of a run is drawn from ``SeedSequence(seed).spawn(num_dishes)[k]`` and the
dish ids from ``default_rng(seed)``, so a seed gives byte-identical files (for one OpenCV build),
whatever ``num_workers``.
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from n5k_hf.data.nutrition5k import DishMetadata, Ingredient, Nutrition5kLayout
from n5k_hf.data.scenes import (
    Bowl,
    Box,
    Cylinder,
    EllipsoidalCap,
    Plate,
    Scene,
    Solid,
    SphericalCap,
    pixel_rays,
    raycast_depth_m,
)
from n5k_hf.geometry.depth import depth_m_to_raw, encode_depth_png
from n5k_hf.geometry.intrinsics import (
    NUTRITION5K_CAMERA_HEIGHT_M,
    NUTRITION5K_IMAGE_HW,
    nutrition5k_intrinsics,
)
from n5k_hf.geometry.plane import table_ring_mask

SHAPES = ("cap", "ellipsoid_cap", "box", "cylinder")

VOLUMES_CSV_HEADER = (
    "dish_id",
    "volume_ml",
    "num_items",
    "item_volumes_ml",
    "volume_above_table_ml",
    "support",
    "support_height_mm",
    "support_plane",
    "table_plane",
)

DEPTH_COLOR_RANGE_M = (0.25, 0.40)
FIRST_DISH_TIMESTAMP_S = 1_550_000_000
RING_OUTER_PX: int = inspect.signature(table_ring_mask).parameters["outer_px"].default
"""Outer radius of the ring `fit_table_plane` fits on (`table_ring_mask`'s default): the flat support
must extend this far past the food in the image."""

SUPPORT_SURFACE_TOLERANCE_M = 1e-4
MAX_LAYOUT_ATTEMPTS = 10
PLACEMENT_CANDIDATES = 30
MIN_FOOTPRINT_RADIUS_M = 0.012
ITEM_GAP_M = 0.003


@dataclass(frozen=True)
class FoodType:
    """A food's look and composition: bulk density (g/mL) and Nutrition5k per-gram values."""

    name: str
    ingredient_id: str
    density_g_per_ml: float
    kcal_per_g: float
    fat_g_per_g: float
    carb_g_per_g: float
    protein_g_per_g: float
    color_rgb: tuple[float, float, float]
    texture_scale: float
    """Texture frequency relative to the base noise (higher = finer grain)."""
    texture_strength: float
    shapes: tuple[str, ...]


# Per-gram values are those of the same ingredient in Nutrition5k's ingredients_metadata.csv.
FOOD_TYPES: tuple[FoodType, ...] = (
    FoodType("white rice", "ingr_0000000026", 0.80, 1.300, 0.003, 0.280, 0.027, (0.93, 0.91, 0.84), 4.0, 0.15, ("cap", "ellipsoid_cap")),
    FoodType("brown rice", "ingr_0000000023", 0.80, 1.110, 0.009, 0.230, 0.026, (0.70, 0.55, 0.36), 4.0, 0.20, ("cap", "ellipsoid_cap")),
    FoodType("mashed potatoes", "ingr_0000000254", 1.00, 0.907, 0.029, 0.151, 0.017, (0.94, 0.86, 0.62), 1.0, 0.08, ("cap", "ellipsoid_cap")),
    FoodType("broccoli", "ingr_0000000027", 0.35, 0.350, 0.004, 0.070, 0.024, (0.22, 0.45, 0.16), 1.5, 0.45, ("ellipsoid_cap", "cap")),
    FoodType("grilled chicken", "ingr_0000000105", 1.05, 2.262, 0.149, 0.001, 0.226, (0.80, 0.60, 0.38), 1.2, 0.25, ("box", "ellipsoid_cap")),
    FoodType("steak", "ingr_0000000010", 1.05, 2.710, 0.190, 0.000, 0.250, (0.42, 0.20, 0.13), 1.0, 0.30, ("box", "ellipsoid_cap")),
    FoodType("salmon", "ingr_0000000332", 1.05, 1.780, 0.080, 0.000, 0.240, (0.95, 0.52, 0.38), 2.0, 0.20, ("box",)),
    FoodType("tofu", "ingr_0000000050", 1.00, 0.730, 0.048, 0.019, 0.080, (0.94, 0.91, 0.80), 0.8, 0.05, ("box",)),
    FoodType("cheese", "ingr_0000000052", 1.10, 4.020, 0.330, 0.013, 0.250, (0.98, 0.78, 0.28), 0.8, 0.06, ("box", "cylinder")),
    FoodType("brownies", "ingr_0000000257", 0.90, 4.661, 0.288, 0.498, 0.062, (0.28, 0.16, 0.09), 1.5, 0.20, ("box",)),
    FoodType("bread", "ingr_0000000019", 0.30, 2.654, 0.042, 0.423, 0.135, (0.84, 0.66, 0.42), 2.5, 0.20, ("box",)),
    FoodType("watermelon", "ingr_0000000121", 0.95, 0.300, 0.002, 0.076, 0.006, (0.88, 0.28, 0.32), 2.0, 0.15, ("box", "ellipsoid_cap")),
    FoodType("cantaloupe", "ingr_0000000037", 0.95, 0.340, 0.002, 0.080, 0.008, (0.97, 0.62, 0.32), 1.5, 0.12, ("box", "ellipsoid_cap")),
    FoodType("tomatoes", "ingr_0000000032", 0.95, 0.340, 0.007, 0.068, 0.007, (0.85, 0.14, 0.10), 0.7, 0.10, ("cylinder", "cap")),
    FoodType("cucumbers", "ingr_0000000031", 0.95, 0.100, 0.000, 0.020, 0.010, (0.55, 0.74, 0.40), 0.7, 0.15, ("cylinder",)),
    FoodType("yogurt", "ingr_0000000262", 1.05, 0.589, 0.004, 0.036, 0.100, (0.96, 0.95, 0.91), 0.5, 0.03, ("cylinder", "cap")),
    FoodType("hummus", "ingr_0000000442", 1.05, 1.660, 0.096, 0.140, 0.079, (0.84, 0.72, 0.48), 1.0, 0.10, ("cap",)),
    FoodType("black beans", "ingr_0000000320", 0.75, 1.320, 0.005, 0.237, 0.089, (0.13, 0.10, 0.10), 5.0, 0.40, ("cap", "ellipsoid_cap")),
    FoodType("corn", "ingr_0000000047", 0.75, 0.960, 0.015, 0.210, 0.034, (0.97, 0.83, 0.28), 5.0, 0.25, ("cap", "ellipsoid_cap")),
    FoodType("pasta", "ingr_0000000074", 0.60, 1.316, 0.011, 0.248, 0.051, (0.94, 0.83, 0.52), 2.0, 0.25, ("ellipsoid_cap", "cap")),
)  # fmt: skip

TABLE_COLORS_RGB = (
    (0.55, 0.38, 0.22),
    (0.62, 0.62, 0.60),
    (0.80, 0.78, 0.74),
    (0.30, 0.32, 0.36),
    (0.45, 0.30, 0.20),
)
SUPPORT_COLORS_RGB = (
    (0.96, 0.96, 0.95),
    (0.93, 0.90, 0.82),
    (0.75, 0.83, 0.92),
    (0.90, 0.90, 0.90),
    (0.35, 0.36, 0.40),
)
FLOOR_ALBEDO = 0.08


@dataclass(frozen=True)
class SyntheticConfig:
    """Ranges the scenes and the sensor model are drawn from (lengths in metres, volumes in mL)."""

    height_px: int = NUTRITION5K_IMAGE_HW[0]
    width_px: int = NUTRITION5K_IMAGE_HW[1]
    camera_height_m: float = NUTRITION5K_CAMERA_HEIGHT_M
    camera_height_jitter_m: float = 0.004
    max_tilt_deg: float = 3.0
    min_items: int = 1
    max_items: int = 4
    total_volume_ml_range: tuple[float, float] = (20.0, 400.0)
    bowl_probability: float = 0.35
    bounded_table_probability: float = 0.25
    depth_noise_m: float = 1e-3
    """Depth noise standard deviation at ``camera_height_m``; it scales with depth squared."""
    correlated_noise_share: float = 0.9
    """Share of the noise variance that is spatially correlated (Gaussian blur of ``noise_blur_px``)."""
    noise_blur_px: float = 3.0
    speckle_dropout_range: tuple[float, float] = (0.01, 0.03)
    max_depth_m: float = 0.4
    sensor_effects: bool = True
    """False: ``depth_raw`` is the exact ray-cast depth (only rounded to 1e-4 m and cut at 0.4 m)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got {self.min_items}, {self.max_items}")
        low, high = self.total_volume_ml_range
        if not 0 < low <= high:
            raise ValueError(
                f"total_volume_ml_range must be 0 < low <= high, got {self.total_volume_ml_range}"
            )
        if self.height_px <= 2 * RING_OUTER_PX or self.width_px <= 2 * RING_OUTER_PX:
            raise ValueError(f"image {self.height_px}x{self.width_px} is too small for the plane ring")


@dataclass
class SyntheticDish:
    """One rendered dish. Images are (H, W); planes are (4,) ``(nx, ny, nz, d)`` in camera coordinates."""

    dish_id: str
    K: np.ndarray
    """(3, 3) float64 intrinsics in pixels."""
    rgb: np.ndarray
    """(H, W, 3) uint8 RGB."""
    depth_raw: np.ndarray
    """(H, W) uint16 sensor depth in 1e-4 m, 0 = no reading."""
    depth_clean_m: np.ndarray
    """(H, W) float32 exact ray-cast depth in metres, NaN where nothing is hit."""
    food_label_mask: np.ndarray
    """(H, W) uint8: 0 background (table, support), 1..n food items."""
    support_mask: np.ndarray
    """(H, W) bool: pixels that see the plate or bowl."""
    item_volumes_ml: tuple[float, ...]
    """Analytic volume of food item ``i + 1`` (label order)."""
    item_food_names: tuple[str, ...]
    """`FoodType` name of food item ``i + 1`` (label order)."""
    volume_above_table_ml: float
    support_kind: str
    support_height_m: float
    support_plane: np.ndarray
    table_plane: np.ndarray
    metadata: DishMetadata
    scene: Scene

    @property
    def volume_ml(self) -> float:
        """Analytic food volume above the support surface (the ground truth; see the module docstring)."""
        return float(sum(self.item_volumes_ml))

    @property
    def food_mask(self) -> np.ndarray:
        """(H, W) bool union of the food items."""
        return self.food_label_mask > 0


@dataclass(frozen=True)
class _ShapeDraw:
    """A food shape up to scale: ``ratios`` fix every size relative to the footprint radius.

    ``cap``: (height / base radius,); ``ellipsoid_cap``: (b / a, c / a, cap height / c);
    ``box``: (size_y / size_x, size_z / size_x); ``cylinder``: (height / radius,).
    """

    shape: str
    ratios: tuple[float, ...]
    yaw_deg: float

    def solid(self, footprint_radius_m: float, center_xy_m: np.ndarray, base_height_m: float) -> Solid:
        """The solid whose footprint fits a circle of ``footprint_radius_m`` (no overhang)."""
        r = footprint_radius_m
        x_m, y_m = float(center_xy_m[0]), float(center_xy_m[1])
        if self.shape == "cap":
            height_m = self.ratios[0] * r
            return SphericalCap(
                (r * r + height_m * height_m) / (2.0 * height_m), height_m, x_m, y_m, base_height_m
            )
        if self.shape == "ellipsoid_cap":
            aspect, c_ratio, cut = self.ratios
            a_m = r / math.sqrt(1.0 - (1.0 - cut) ** 2)  # the cut ellipse has semi-axis r along a
            c_m = c_ratio * a_m
            return EllipsoidalCap(a_m, aspect * a_m, c_m, cut * c_m, x_m, y_m, base_height_m, self.yaw_deg)
        if self.shape == "box":
            aspect, z_ratio = self.ratios
            size_x_m = 2.0 * r / math.hypot(1.0, aspect)  # r is the half diagonal
            return Box(size_x_m, aspect * size_x_m, z_ratio * size_x_m, x_m, y_m, base_height_m, self.yaw_deg)
        if self.shape == "cylinder":
            return Cylinder(r, self.ratios[0] * r, x_m, y_m, base_height_m)
        raise ValueError(f"unknown food shape {self.shape!r}; expected one of {SHAPES}")

    def footprint_area_m2(self, footprint_radius_m: float) -> float:
        """Area of the solid's base on the support (exact)."""
        r2 = footprint_radius_m**2
        if self.shape == "ellipsoid_cap":
            return math.pi * r2 * self.ratios[0]
        if self.shape == "box":
            aspect = self.ratios[0]
            return 4.0 * r2 * aspect / (1.0 + aspect * aspect)
        return math.pi * r2

    def unit_volume_ml(self) -> float:
        """Volume at a footprint radius of 1 m (volumes scale with its cube)."""
        return self.solid(1.0, np.zeros(2), 0.0).volume_ml

    def unit_height(self) -> float:
        """Height at a footprint radius of 1 m (heights scale linearly)."""
        return self.solid(1.0, np.zeros(2), 0.0).top_height_m

    def taller(self, factor: float) -> _ShapeDraw:
        """The same shape with its height ratio multiplied by ``factor`` (at most `MAX_HEIGHT_RATIO`)."""
        index = HEIGHT_RATIO_INDEX[self.shape]
        ratios = list(self.ratios)
        ratios[index] = min(ratios[index] * factor, max(ratios[index], MAX_HEIGHT_RATIO[self.shape]))
        return _ShapeDraw(self.shape, tuple(ratios), self.yaw_deg)


HEIGHT_RATIO_INDEX = {"cap": 0, "ellipsoid_cap": 1, "box": 1, "cylinder": 0}
MAX_HEIGHT_RATIO = {"cap": 1.0, "ellipsoid_cap": 0.9, "box": 0.7, "cylinder": 1.4}
"""Caps stop at a hemisphere (no overhang, which a height map cannot see)."""


def _draw_shape(rng: np.random.Generator, food: FoodType) -> _ShapeDraw:
    shape = str(rng.choice(food.shapes))
    yaw_deg = float(rng.uniform(0.0, 180.0))
    if shape == "cap":
        return _ShapeDraw(shape, (rng.uniform(0.25, 0.8),), 0.0)
    if shape == "ellipsoid_cap":
        return _ShapeDraw(
            shape, (rng.uniform(0.5, 1.0), rng.uniform(0.25, 0.7), rng.uniform(0.6, 1.0)), yaw_deg
        )
    if shape == "box":
        return _ShapeDraw(shape, (rng.uniform(0.5, 1.0), rng.uniform(0.15, 0.5)), yaw_deg)
    return _ShapeDraw(shape, (rng.uniform(0.2, 1.0),), 0.0)


@dataclass(frozen=True)
class _PlacedItem:
    food: FoodType
    draw: _ShapeDraw
    footprint_radius_m: float
    center_xy_m: np.ndarray
    shift_m: float
    """How far the item's top edge appears beyond its footprint, measured on the support plane."""


@dataclass(frozen=True)
class _SupportArea:
    """Where food may stand: a disk of the flat support surface, ring margin already removed."""

    center_xy_m: np.ndarray
    radius_m: float
    depth_m: float
    """Camera-to-support distance."""


def _fit_radius(
    center_xy_m: np.ndarray,
    largest_m: float,
    unit_height: float,
    placed: list[_PlacedItem],
    area: _SupportArea,
) -> tuple[float, float]:
    """Largest footprint radius <= ``largest_m`` (4% steps) that keeps the item, including the outward
    shift of its top edge in the image, inside ``area`` and apart from every placed item by both
    footprints, the larger shift and `ITEM_GAP_M` (so that no item hides another). (0, 0) if none."""
    radius_m = largest_m
    reach_to_axis_m = float(np.hypot(*center_xy_m))
    to_center_m = float(np.hypot(*(center_xy_m - area.center_xy_m)))
    while radius_m >= MIN_FOOTPRINT_RADIUS_M:
        height_m = unit_height * radius_m
        shift_m = (reach_to_axis_m + radius_m) * height_m / (area.depth_m - height_m)
        if to_center_m + radius_m + shift_m <= area.radius_m and all(
            np.hypot(*(center_xy_m - other.center_xy_m))
            >= radius_m + other.footprint_radius_m + max(shift_m, other.shift_m) + ITEM_GAP_M
            for other in placed
        ):
            return radius_m, shift_m
        radius_m *= 0.96
    return 0.0, 0.0


def _place_item(
    rng: np.random.Generator, food: FoodType, volume_ml: float, placed: list[_PlacedItem], area: _SupportArea
) -> _PlacedItem | None:
    """Place one item of about ``volume_ml``: the best of `PLACEMENT_CANDIDATES` random spots; where
    the footprint must shrink, the shape grows taller to keep some of the volume. None if no room."""
    draw = _draw_shape(rng, food)
    wanted_m = (volume_ml / draw.unit_volume_ml()) ** (1.0 / 3.0)
    best: tuple[float, float, np.ndarray] = (0.0, 0.0, area.center_xy_m)
    for _ in range(PLACEMENT_CANDIDATES):
        offset = area.radius_m * math.sqrt(rng.random())
        angle = rng.uniform(0.0, 2.0 * math.pi)
        center = area.center_xy_m + offset * np.array([math.cos(angle), math.sin(angle)])
        radius_m, shift_m = _fit_radius(center, wanted_m, draw.unit_height(), placed, area)
        if radius_m > best[0]:
            best = (radius_m, shift_m, center)
        if radius_m >= wanted_m:
            break
    radius_m, shift_m, center = best
    if radius_m == 0.0:
        return None
    if radius_m < wanted_m:
        draw = draw.taller((wanted_m / radius_m) ** 2)
        radius_m, shift_m = _fit_radius(center, radius_m, draw.unit_height(), placed, area)
        if radius_m == 0.0:
            return None
    return _PlacedItem(food, draw, radius_m, center, shift_m)


def _draw_support(rng: np.random.Generator, config: SyntheticConfig) -> tuple[Plate | Bowl, float]:
    """A plate or a bowl near the image centre, and the radius of its flat surface (metres).

    A bowl's centre stays within 1.5 cm of the camera axis, so its wall never hides its floor.
    """
    if rng.random() < config.bowl_probability:
        inner_m = rng.uniform(0.09, 0.12)
        center = rng.uniform(-0.015, 0.015, size=2)
        bowl = Bowl(
            inner_radius_m=inner_m,
            outer_radius_m=inner_m + rng.uniform(0.005, 0.01),
            height_m=rng.uniform(0.03, 0.05),
            floor_thickness_m=rng.uniform(0.004, 0.01),
            center_x_m=float(center[0]),
            center_y_m=float(center[1]),
        )
        return bowl, inner_m
    radius_m = rng.uniform(0.12, 0.16)
    center = rng.uniform([-0.03, -0.02], [0.03, 0.02])
    return Plate(radius_m, rng.uniform(0.006, 0.015), float(center[0]), float(center[1])), radius_m


def _draw_scene(
    rng: np.random.Generator, config: SyntheticConfig, K: np.ndarray
) -> tuple[Scene, list[_PlacedItem], float]:
    """Scene with the support as solid 1 and food items as solids 2..n+1; also the support height.

    Items get a total volume drawn log-uniformly from ``config.total_volume_ml_range`` split by a
    Dirichlet(2) draw; crowded supports make items smaller (and taller) or drop the later ones, the
    volume an item could not take going to the items after it.
    """
    camera_height_m = config.camera_height_m + rng.uniform(-1.0, 1.0) * config.camera_height_jitter_m
    tilt_deg = rng.uniform(0.0, config.max_tilt_deg)
    tilt_axis_deg = rng.uniform(0.0, 360.0)
    bounded = rng.random() < config.bounded_table_probability
    table_half_size_m = rng.uniform(0.2, 0.24) if bounded else math.inf
    support, flat_radius_m = _draw_support(rng, config)
    support_height_m = support.support_height_m
    support_depth_m = camera_height_m - support_height_m
    ring_margin_m = (RING_OUTER_PX + 2) * support_depth_m / min(K[0, 0], K[1, 1]) + 0.002
    area = _SupportArea(
        np.array([support.center_x_m, support.center_y_m]), flat_radius_m - ring_margin_m, support_depth_m
    )

    num_items = int(rng.integers(config.min_items, config.max_items + 1))
    low, high = config.total_volume_ml_range
    total_ml = math.exp(rng.uniform(math.log(low), math.log(high)))
    shares = np.sort(rng.dirichlet(np.full(num_items, 2.0)))[::-1]  # largest first: it needs the room
    placed: list[_PlacedItem] = []
    remaining_ml, remaining_share = total_ml, 1.0
    for share in shares:
        # an item that came out smaller than asked passes the missing volume on to the next ones
        food = FOOD_TYPES[int(rng.integers(len(FOOD_TYPES)))]
        item = _place_item(rng, food, remaining_ml * share / remaining_share, placed, area)
        remaining_share -= share
        if item is not None:
            placed.append(item)
            remaining_ml -= item.draw.solid(item.footprint_radius_m, item.center_xy_m, 0.0).volume_ml
        if remaining_ml <= 0.0 or remaining_share <= 1e-9:
            break
    if not placed:
        raise RuntimeError(f"no room for food on a support of flat radius {flat_radius_m:.3f} m")
    solids = [item.draw.solid(item.footprint_radius_m, item.center_xy_m, support_height_m) for item in placed]
    scene = Scene(
        solids=(support, *solids),
        camera_height_m=camera_height_m,
        tilt_deg=tilt_deg,
        tilt_axis_deg=tilt_axis_deg,
        table_half_size_m=table_half_size_m,
    )
    return scene, placed, support_height_m


def _ring_on_support(
    points_m: np.ndarray, object_id: np.ndarray, table_plane: np.ndarray, support_height_m: float
) -> bool:
    """True when every pixel of the plane-fitting ring around the food sees the flat support surface.

    ``points_m`` (H, W, 3) camera-frame points, ``object_id`` (H, W) from `raycast_depth_m`,
    ``table_plane`` (4,) ``(nx, ny, nz, d)``.
    """
    ring = table_ring_mask(object_id >= 2)
    if not (object_id[ring] == 1).all():
        return False
    heights_m = points_m[ring].astype(np.float64) @ table_plane[:3] + table_plane[3]
    return bool(np.all(np.abs(heights_m - support_height_m) < SUPPORT_SURFACE_TOLERANCE_M))


@functools.lru_cache(maxsize=4)
def _camera_grids(K_bytes: bytes, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-camera constants, computed once: (H, W, 3) float32 pixel rays (z = 1), the same rays
    normalised, and (H, W) float32 vignetting gain."""
    K = np.frombuffer(K_bytes, dtype=np.float64).reshape(3, 3)
    rays = pixel_rays(K, height, width).astype(np.float32)
    unit_rays = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    radius2 = ((u - K[0, 2]) / width) ** 2 + ((v - K[1, 2]) / height) ** 2
    for array in (rays, unit_rays):
        array.setflags(write=False)
    vignette = (1.0 - 0.3 * radius2).astype(np.float32)
    vignette.setflags(write=False)
    return rays, unit_rays, vignette


def _surface_normals(points_m: np.ndarray, object_id: np.ndarray, fallback_normal: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 unit normals towards the camera from (H, W, 3) camera-frame points.

    Tangents are the sums of the forward and backward differences to neighbours of the same object
    (scale does not change the normal's direction); a pixel without such a neighbour along an image
    axis, or with no hit, takes ``fallback_normal`` (3,).
    """
    points = np.nan_to_num(points_m.astype(np.float32))
    tangents = []
    for axis in (0, 1):
        step = np.diff(points, axis=axis)
        step *= (np.diff(object_id, axis=axis) == 0)[..., None]
        tangent = np.zeros_like(points)
        ahead = (slice(None), slice(None, -1)) if axis == 1 else (slice(None, -1),)
        behind = (slice(None), slice(1, None)) if axis == 1 else (slice(1, None),)
        tangent[ahead] += step
        tangent[behind] += step
        tangents.append(tangent)
    normals = np.cross(tangents[0], tangents[1])
    length = np.linalg.norm(normals, axis=-1)
    usable = (length > 1e-12) & (object_id >= 0)
    normals[usable] /= length[usable, None]
    normals[~usable] = fallback_normal
    facing_away = np.einsum("hwc,hwc->hw", normals, points) > 0
    normals[facing_away] *= -1.0
    return normals


def _noise_field(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """(size, size, 3) float32 smooth noise of about unit amplitude, three octaves."""
    field = np.zeros((size, size, 3), dtype=np.float32)
    for cells, weight in ((12, 0.5), (48, 0.3), (size, 0.2)):
        coarse = rng.standard_normal((cells, cells, 3)).astype(np.float32)
        field += weight * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return field


def _albedo(
    rng: np.random.Generator,
    scene: Scene,
    items: list[_PlacedItem],
    object_id: np.ndarray,
    table_xy_m: np.ndarray,
) -> np.ndarray:
    """(H, W, 3) float32 albedo in [0, 1]: per-object colour times texture sampled at the (H, W, 2)
    table-frame coordinates ``table_xy_m`` of each pixel's surface point."""
    num_objects = len(scene.solids) + 1  # 0 table, 1 support, 2.. food
    colors = np.zeros((num_objects + 1, 3))  # last row: nothing hit
    strengths = np.zeros(num_objects + 1)
    scales = np.ones(num_objects + 1)
    colors[0] = np.asarray(TABLE_COLORS_RGB[int(rng.integers(len(TABLE_COLORS_RGB)))]) * rng.uniform(
        0.85, 1.1
    )
    strengths[0], scales[0] = rng.uniform(0.05, 0.2), rng.uniform(0.3, 1.5)
    colors[1] = SUPPORT_COLORS_RGB[int(rng.integers(len(SUPPORT_COLORS_RGB)))]
    strengths[1], scales[1] = 0.03, 1.0
    for index, item in enumerate(items, start=2):
        colors[index] = np.asarray(item.food.color_rgb) * rng.uniform(0.9, 1.08, size=3)
        strengths[index], scales[index] = item.food.texture_strength, item.food.texture_scale
    colors[-1] = FLOOR_ALBEDO
    offsets = rng.uniform(-0.2, 0.2, size=(num_objects + 1, 2))

    field = _noise_field(rng)
    cell_m = 0.002
    lookup = np.where(object_id >= 0, object_id, num_objects)
    xy = np.nan_to_num(table_xy_m) * scales[lookup][..., None].astype(np.float32) + offsets[lookup]
    half = field.shape[0] / 2.0
    map_x = (xy[..., 0] / cell_m + half).astype(np.float32)
    map_y = (xy[..., 1] / cell_m + half).astype(np.float32)
    texture = cv2.remap(field, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    strength = strengths.astype(np.float32)[lookup][..., None]
    # luminance from the first noise channel, a little hue shift from the other two
    gain = 1.0 + strength * (texture[..., :1] + 0.3 * texture[..., [1, 2, 1]])
    albedo = colors.astype(np.float32)[lookup] * gain
    return np.clip(albedo, 0.0, 1.0, out=albedo)


def _shade_rgb(
    rng: np.random.Generator, albedo: np.ndarray, normals: np.ndarray, vignette: np.ndarray
) -> np.ndarray:
    """(H, W, 3) uint8 from (H, W, 3) albedo and normals and (H, W) vignetting gain: Lambertian shading
    under one directional light plus ambient, a gamma of 2.2 and 1.5 grey levels of noise."""
    elevation = math.radians(rng.uniform(25.0, 60.0))  # angle of the light from the optical axis
    azimuth = rng.uniform(0.0, 2.0 * math.pi)
    light = np.array(
        [
            math.sin(elevation) * math.cos(azimuth),
            math.sin(elevation) * math.sin(azimuth),
            -math.cos(elevation),
        ]
    )
    ambient = rng.uniform(0.12, 0.3)
    diffuse = np.clip(normals @ light.astype(np.float32), 0.0, None)
    intensity = ambient + (1.0 - ambient) * diffuse
    linear = albedo * (intensity * vignette * np.float32(rng.uniform(0.9, 1.1)))[..., None]
    srgb = np.clip(linear, 0.0, 1.0) ** np.float32(1.0 / 2.2) * np.float32(255.0)
    srgb += rng.standard_normal(srgb.shape, dtype=np.float32) * np.float32(1.5)
    return np.clip(np.rint(srgb), 0, 255).astype(np.uint8)


def _sensor_depth_m(
    rng: np.random.Generator,
    config: SyntheticConfig,
    depth_clean_m: np.ndarray,
    unit_rays: np.ndarray,
    normals: np.ndarray,
    albedo: np.ndarray,
) -> np.ndarray:
    """(H, W) float64 sensor-like depth, NaN = no reading, from the exact (H, W) ``depth_clean_m``.

    Noise: ``config.depth_noise_m * (Z / camera_height)^2``, partly blurred (correlated). Dropout:
    speckles; half of the far-side pixels of depth steps over 5 mm (stereo shadow); 70% of pixels seen
    at grazing angles (|cos| < 0.25 between the (H, W, 3) ``unit_rays`` and ``normals``); 30% of dark
    pixels (mean (H, W, 3) ``albedo`` < 0.12); everything beyond ``config.max_depth_m``.
    """
    depth = depth_clean_m.astype(np.float64)
    valid = np.isfinite(depth)
    if config.sensor_effects:
        sigma_m = config.depth_noise_m * (np.nan_to_num(depth) / config.camera_height_m) ** 2
        white = rng.standard_normal(depth.shape, dtype=np.float32)
        correlated = cv2.GaussianBlur(
            rng.standard_normal(depth.shape, dtype=np.float32), (0, 0), config.noise_blur_px
        )
        correlated /= correlated.std()
        share = config.correlated_noise_share
        depth += sigma_m * (math.sqrt(share) * correlated + math.sqrt(1.0 - share) * white)

        dropout = rng.random(depth.shape, dtype=np.float32) < rng.uniform(*config.speckle_dropout_range)
        filled = np.nan_to_num(depth_clean_m, nan=10.0)
        stereo_shadow = np.zeros(depth.shape, dtype=bool)
        for axis in (0, 1):
            step = np.diff(filled, axis=axis)
            edge = np.abs(step) > 0.005
            after = (slice(None), slice(1, None)) if axis == 1 else (slice(1, None),)
            before = (slice(None), slice(None, -1)) if axis == 1 else (slice(None, -1),)
            stereo_shadow[after] |= edge & (step > 0)  # the farther pixel of a step
            stereo_shadow[before] |= edge & (step < 0)
        grazing = np.abs(np.einsum("hwc,hwc->hw", unit_rays, normals)) < 0.25
        dark = albedo.mean(axis=-1) < 0.12
        chance = rng.random(depth.shape, dtype=np.float32)
        dropout |= (stereo_shadow & (chance < 0.5)) | (grazing & (chance < 0.7)) | (dark & (chance < 0.3))
        depth[dropout] = np.nan
    with np.errstate(invalid="ignore"):
        depth[~valid | (depth > config.max_depth_m) | (depth <= 0)] = np.nan
    return depth


def _metadata(dish_id: str, foods: list[FoodType], volumes_ml: tuple[float, ...]) -> DishMetadata:
    """Nutrition5k-style metadata: one ingredient per food type, grams = volume x bulk density."""
    grams_by_food: dict[str, float] = {}
    food_by_name: dict[str, FoodType] = {}
    for food, volume_ml in zip(foods, volumes_ml):
        grams_by_food[food.name] = grams_by_food.get(food.name, 0.0) + volume_ml * food.density_g_per_ml
        food_by_name[food.name] = food
    ingredients = []
    for name, grams in grams_by_food.items():
        food = food_by_name[name]
        per_gram = (food.kcal_per_g, food.fat_g_per_g, food.carb_g_per_g, food.protein_g_per_g)
        ingredients.append(
            Ingredient(
                food.ingredient_id, name, round(grams, 6), *(round(grams * value, 6) for value in per_gram)
            )
        )
    return DishMetadata(
        dish_id=dish_id,
        total_calories=round(sum(i.calories for i in ingredients), 6),
        total_mass=round(sum(i.grams for i in ingredients), 6),
        total_fat=round(sum(i.fat for i in ingredients), 6),
        total_carb=round(sum(i.carb for i in ingredients), 6),
        total_protein=round(sum(i.protein for i in ingredients), 6),
        ingredients=tuple(ingredients),
        cafe=1,
    )


def render_synthetic_dish(
    rng: np.random.Generator,
    K: np.ndarray | None = None,
    *,
    dish_id: str = "dish_1550000000",
    config: SyntheticConfig | None = None,
) -> SyntheticDish:
    """Draw and render one synthetic dish (in memory; nothing is written).

    Args:
        rng: the only source of randomness: the same generator state gives the same dish.
        K: (3, 3) intrinsics for ``config.height_px`` x ``config.width_px``; default
            `nutrition5k_intrinsics` of that size.
        dish_id: id stored in the result and its metadata.
        config: scene and sensor ranges; default `SyntheticConfig()`.
    """
    config = config or SyntheticConfig()
    height, width = config.height_px, config.width_px
    K = nutrition5k_intrinsics(width, height) if K is None else np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    rays, unit_rays, vignette = _camera_grids(K.tobytes(), height, width)
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        scene, items, support_height_m = _draw_scene(rng, config, K)
        depth_clean_m, object_id = raycast_depth_m(scene, K, height, width)
        points_m = rays * depth_clean_m[..., None]
        table_plane = scene.plane_array()
        if _ring_on_support(points_m, object_id, table_plane, support_height_m):
            break
    else:
        raise RuntimeError(
            f"{dish_id}: no layout kept the plane ring on the support in {MAX_LAYOUT_ATTEMPTS} tries"
        )

    support_plane = table_plane - np.array([0.0, 0.0, 0.0, support_height_m])
    # table frame = camera frame rotated; the camera sits above the table origin, so x, y need no shift
    table_xy_m = points_m @ scene.table_to_camera_rotation()[:, :2].astype(np.float32)
    normals = _surface_normals(points_m, object_id, table_plane[:3])
    albedo = _albedo(rng, scene, items, object_id, table_xy_m)
    rgb = _shade_rgb(rng, albedo, normals, vignette)
    sensor_depth_m = _sensor_depth_m(rng, config, depth_clean_m, unit_rays, normals, albedo)

    food_label_mask = np.where(object_id >= 2, object_id - 1, 0).astype(np.uint8)
    footprint_m2 = sum(item.draw.footprint_area_m2(item.footprint_radius_m) for item in items)
    item_volumes_ml = tuple(float(solid.volume_ml) for solid in scene.solids[1:])
    return SyntheticDish(
        dish_id=dish_id,
        K=K,
        rgb=rgb,
        depth_raw=depth_m_to_raw(sensor_depth_m),
        depth_clean_m=depth_clean_m,
        food_label_mask=food_label_mask,
        support_mask=object_id == 1,
        item_volumes_ml=item_volumes_ml,
        item_food_names=tuple(item.food.name for item in items),
        volume_above_table_ml=float(sum(item_volumes_ml) + support_height_m * footprint_m2 * 1e6),
        support_kind="bowl" if isinstance(scene.solids[0], Bowl) else "plate",
        support_height_m=float(support_height_m),
        support_plane=support_plane,
        table_plane=table_plane,
        metadata=_metadata(dish_id, [item.food for item in items], item_volumes_ml),
        scene=scene,
    )


def format_metadata_row(dish: DishMetadata) -> str:
    """One ``dish_metadata_cafe*.csv`` line (no newline): 6 dish fields, then 7 per ingredient.

    Missing totals (None) are written as 0, as Nutrition5k does for cafe 2.
    """
    if any("," in ingredient.name for ingredient in dish.ingredients):
        raise ValueError(
            f"{dish.dish_id}: ingredient names must not contain commas (the format has no quoting)"
        )
    totals = (dish.total_calories, dish.total_mass, dish.total_fat, dish.total_carb, dish.total_protein)
    fields = [dish.dish_id, *(f"{0.0 if value is None else value:.6f}" for value in totals)]
    for ingredient in dish.ingredients:
        fields += [ingredient.id, ingredient.name]
        fields += [f"{value:.6f}" for value in (ingredient.grams, ingredient.calories, ingredient.fat)]
        fields += [f"{value:.6f}" for value in (ingredient.carb, ingredient.protein)]
    return ",".join(fields)


def synthetic_dish_ids(num_dishes: int, seed: int) -> list[str]:
    """``num_dishes`` increasing ids ``dish_<10-digit timestamp>``, 20 s to 10 min apart, fixed by ``seed``."""
    if num_dishes < 1:
        raise ValueError(f"num_dishes must be at least 1, got {num_dishes}")
    rng = np.random.default_rng(seed)
    start = FIRST_DISH_TIMESTAMP_S + int(rng.integers(0, 20_000_000))
    timestamps = start + np.cumsum(rng.integers(20, 600, size=num_dishes))
    return [f"dish_{int(timestamp)}" for timestamp in timestamps]


def _volumes_row(dish: SyntheticDish) -> list[str]:
    return [
        dish.dish_id,
        f"{dish.volume_ml:.4f}",
        str(len(dish.item_volumes_ml)),
        ";".join(f"{volume:.4f}" for volume in dish.item_volumes_ml),
        f"{dish.volume_above_table_ml:.4f}",
        dish.support_kind,
        f"{dish.support_height_m * 1e3:.4f}",
        " ".join(f"{value:.8f}" for value in dish.support_plane),
        " ".join(f"{value:.8f}" for value in dish.table_plane),
    ]


def _depth_color(depth_raw: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR picture of raw depth: `DEPTH_COLOR_RANGE_M` through JET, black = no reading."""
    near_m, far_m = DEPTH_COLOR_RANGE_M
    depth_m = depth_raw.astype(np.float64) / 10_000.0
    scaled = np.clip((far_m - depth_m) / (far_m - near_m), 0.0, 1.0)
    colored = cv2.applyColorMap(np.rint(scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored[depth_raw == 0] = 0
    return colored


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode {path}")
    path.write_bytes(buffer.tobytes())


def _render_and_write(
    task: tuple[str, np.random.SeedSequence, np.ndarray, SyntheticConfig, str],
) -> tuple[str, list[str]]:
    dish_id, seed_sequence, K, config, output_dir = task
    dish = render_synthetic_dish(np.random.default_rng(seed_sequence), K, dish_id=dish_id, config=config)
    layout = Nutrition5kLayout(output_dir)
    layout.dish_dir(dish_id).mkdir(parents=True, exist_ok=True)
    _write_png(layout.rgb_path(dish_id), cv2.cvtColor(dish.rgb, cv2.COLOR_RGB2BGR))
    layout.depth_raw_path(dish_id).write_bytes(encode_depth_png(dish.depth_raw))
    _write_png(layout.depth_color_path(dish_id), _depth_color(dish.depth_raw))
    _write_png(Path(output_dir) / "ground_truth" / "masks" / f"{dish_id}.png", dish.food_label_mask)
    return format_metadata_row(dish.metadata), _volumes_row(dish)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def make_synthetic_nutrition5k(
    output_dir: Path | str,
    num_dishes: int,
    seed: int,
    *,
    test_fraction: float = 0.2,
    K: np.ndarray | None = None,
    config: SyntheticConfig | None = None,
    num_workers: int = 1,
) -> list[str]:
    """Write ``num_dishes`` synthetic dishes in the Nutrition5k layout (see the module docstring).

    ``round(test_fraction * num_dishes)`` randomly chosen dishes form the test split (depth and rgb
    splits are equal). Returns the dish ids in time order. Existing files are overwritten.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    config = config or SyntheticConfig()
    K = nutrition5k_intrinsics(config.width_px, config.height_px) if K is None else np.asarray(K, np.float64)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "ground_truth" / "masks").mkdir(parents=True, exist_ok=True)
    layout = Nutrition5kLayout(output_dir)

    dish_ids = synthetic_dish_ids(num_dishes, seed)
    seeds = np.random.SeedSequence(seed).spawn(num_dishes)
    tasks = [(dish_id, child, K, config, str(output_dir)) for dish_id, child in zip(dish_ids, seeds)]
    if num_workers == 1:
        results = [_render_and_write(task) for task in tasks]
    else:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(_render_and_write, tasks))

    _write_lines(layout.dish_metadata_path(1), [metadata_row for metadata_row, _ in results])
    _write_lines(layout.dish_metadata_path(2), [])
    _write_lines(
        layout.ingredients_metadata_path,
        ["ingr,id,cal/g,fat(g),carb(g),protein(g)"]
        + [
            f"{food.name},{int(food.ingredient_id[len('ingr_') :])},{food.kcal_per_g:.3f},"
            f"{food.fat_g_per_g:.3f},{food.carb_g_per_g:.3f},{food.protein_g_per_g:.3f}"
            for food in sorted(FOOD_TYPES, key=lambda food: food.ingredient_id)
        ],
    )
    volumes_path = output_dir / "ground_truth" / "volumes.csv"
    with volumes_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(VOLUMES_CSV_HEADER)
        writer.writerows(volumes_row for _, volumes_row in results)
    camera = {"K": K.tolist(), "height_px": config.height_px, "width_px": config.width_px}
    (output_dir / "ground_truth" / "camera.json").write_text(
        json.dumps(camera, indent=2) + "\n", encoding="utf-8"
    )

    split_rng = np.random.default_rng([seed, 1])
    test_set = {dish_ids[i] for i in split_rng.permutation(num_dishes)[: round(test_fraction * num_dishes)]}
    train_ids = [dish_id for dish_id in dish_ids if dish_id not in test_set]
    test_ids = [dish_id for dish_id in dish_ids if dish_id in test_set]
    for modality in ("depth", "rgb"):
        _write_lines(layout.split_path(f"{modality}_train"), train_ids)
        _write_lines(layout.split_path(f"{modality}_test"), test_ids)
    for name in ("all", "cafe1"):
        _write_lines(output_dir / "dish_ids" / f"dish_ids_{name}.txt", dish_ids)
    _write_lines(output_dir / "dish_ids" / "dish_ids_cafe2.txt", [])
    return dish_ids
