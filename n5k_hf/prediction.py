"""Food volume per item on new photos: predicted metric depth, food masks, K, table plane, integrator.

For each image: the depth comes from a DAV2-metric model (:class:`DepthPredictor`: the model's
image processor, the forward, the prediction resized bilinearly to the image size); the camera
matrix from, in this order, explicit focal lengths or a field of view (source ``"flags"``), the
EXIF 35 mm-equivalent focal length (``"exif"``, see :func:`resolve_intrinsics`), or the Nutrition5k
camera scaled to the image size (``"nutrition5k_default"``, with a warning). The table plane is
fitted once per image on a ring of table pixels around ALL the food items (``fit_table_plane`` with
the union of the items; its ring widths follow the focal length, 10-40 px at Nutrition5k's), and
each item's volume is integrated above that plane (``n5k_hf.geometry.measure_food_item``).

Food items (:func:`items_from_mask_files`): with one mask file for an image, each distinct
non-zero value of a label image is an item, and a binary mask (one non-zero value) is split into
its 8-connected components; with several mask files for one image, each file is one item (all its
non-zero pixels). Without masks, the food is found in the predicted depth (`depth_food_mask`), one
item per connected piece; that needs a plate or bowl under the food (with food straight on the
table, a flat food top is taken for the plate and nothing is found). Masks must have the image's size (after its EXIF orientation is applied).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from n5k_hf.data.masks import MaskFileError, depth_food_labels, label_items, load_external_mask
from n5k_hf.exif import focal_length_35mm
from n5k_hf.geometry.depth import depth_m_to_raw, encode_depth_png
from n5k_hf.geometry.intrinsics import (
    intrinsics_from_35mm_focal,
    intrinsics_from_fov,
    make_intrinsics,
    nutrition5k_intrinsics,
)
from n5k_hf.geometry.plane import Plane, fit_table_plane
from n5k_hf.geometry.volume import VOLUME_METHODS, measure_food_item

logger = logging.getLogger(__name__)

K_SOURCES = ("flags", "exif", "nutrition5k_default")


class PredictionInputError(ValueError):
    """An image, a mask or a camera flag that cannot be used; the message names the file or flag."""


@dataclass(frozen=True)
class FoodItemMask:
    """One food item of an image: its (H, W) bool ``mask`` and where it came from.

    ``source`` is ``"label_value"`` (value ``label`` of a label image), ``"connected_component"``
    (piece ``label`` of a binary mask, largest first), ``"mask_file"`` (the whole file) or
    ``"depth_mask"`` (piece ``label`` of the food found in the predicted depth).
    """

    mask: np.ndarray
    source: str
    label: int
    mask_file: str | None = None


@dataclass(frozen=True)
class LoadedImage:
    """An input photo: (H, W, 3) uint8 ``rgb`` upright (EXIF orientation applied), its EXIF focal length."""

    path: Path
    rgb: np.ndarray
    focal_length_35mm: float | None

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def load_image(path: str | Path) -> LoadedImage:
    """Read a photo as upright RGB; raises PredictionInputError for a missing or non-image file."""
    path = Path(path)
    if not path.is_file():
        raise PredictionInputError(
            f"image {path} does not exist" if not path.exists() else f"image {path} is not a file"
        )
    try:
        with Image.open(path) as image:
            focal_mm = focal_length_35mm(image)
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise PredictionInputError(f"image {path} is not an image file PIL can read ({error})") from error
    return LoadedImage(path=path, rgb=rgb, focal_length_35mm=focal_mm)


def resolve_intrinsics(
    width: int,
    height: int,
    *,
    fx_px: float | None = None,
    fy_px: float | None = None,
    fov_deg: float | None = None,
    focal_35mm: float | None = None,
) -> tuple[np.ndarray, str]:
    """(3, 3) K for a ``width`` x ``height`` image and its source (one of `K_SOURCES`).

    * ``fx_px`` and ``fy_px`` (pixels of this image; both or neither) or ``fov_deg`` (horizontal,
      edge to edge): ``"flags"``, principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)``;
    * else ``focal_35mm`` (EXIF FocalLengthIn35mmFilm): ``"exif"``, diagonal convention of the 35 mm
      equivalent: ``f_px = focal_35mm * hypot(W, H) / hypot(36, 24)`` (for a 3:2 photo this is
      ``focal_35mm / 36 * W``; for 4:3 it is 4 % more than the long-side rule ``/ 36 * W``);
    * else the Nutrition5k camera resized to the image (``"nutrition5k_default"``, logged as a
      warning: the volumes then hold only for a camera like Nutrition5k's, 35.9 cm above the table).
    """
    if (fx_px is None) != (fy_px is None):
        raise PredictionInputError("--fx and --fy must be given together (focal lengths in pixels)")
    if fx_px is not None and fov_deg is not None:
        raise PredictionInputError("give either --fx/--fy or --fov-deg, not both")
    if fx_px is not None:
        if not (math.isfinite(fx_px) and math.isfinite(fy_px) and fx_px > 0 and fy_px > 0):
            raise PredictionInputError(f"--fx and --fy must be positive pixels, got {fx_px}, {fy_px}")
        return make_intrinsics(fx_px, fy_px, (width - 1) / 2.0, (height - 1) / 2.0), "flags"
    if fov_deg is not None:
        try:
            return intrinsics_from_fov(width, height, fov_deg), "flags"
        except ValueError as error:
            raise PredictionInputError(f"--fov-deg: {error}") from error
    if focal_35mm is not None:
        return intrinsics_from_35mm_focal(width, height, focal_35mm), "exif"
    return nutrition5k_intrinsics(width, height), "nutrition5k_default"


def assign_masks(image_paths: Sequence[Path], mask_paths: Sequence[Path]) -> list[list[Path]]:
    """Mask files of each image: all of them for a single image, else one per image in order."""
    if not mask_paths:
        return [[] for _ in image_paths]
    if len(image_paths) == 1:
        return [list(mask_paths)]
    if len(mask_paths) != len(image_paths):
        raise PredictionInputError(
            f"{len(image_paths)} images and {len(mask_paths)} masks: give one mask per image (in the same "
            "order), or any number of masks for a single image"
        )
    return [[mask] for mask in mask_paths]


def items_from_mask_files(mask_paths: Sequence[Path], image: LoadedImage) -> list[FoodItemMask]:
    """Food items of one image from its mask files (see the module docstring); errors name both files."""
    items: list[FoodItemMask] = []
    for mask_path in mask_paths:
        if not Path(mask_path).is_file():
            raise PredictionInputError(f"mask {mask_path} (for image {image.path}) does not exist")
        try:
            labels = load_external_mask(mask_path, image.hw)
        except MaskFileError as error:
            raise PredictionInputError(f"{error} (the size of image {image.path})") from error
        num_values = int(labels.max())
        if num_values == 0:
            raise PredictionInputError(
                f"mask {mask_path} (for image {image.path}) is empty: no non-zero pixel"
            )
        if len(mask_paths) > 1:
            items.append(FoodItemMask(labels > 0, "mask_file", 1, str(mask_path)))
        elif num_values > 1:
            items.extend(
                FoodItemMask(labels == value, "label_value", value, str(mask_path))
                for value in range(1, num_values + 1)
            )
        else:
            components = label_items(labels > 0)
            items.extend(
                FoodItemMask(components == index, "connected_component", index, str(mask_path))
                for index in range(1, int(components.max()) + 1)
            )
    return items


def measure_items(
    depth_m: np.ndarray,
    items: Sequence[FoodItemMask],
    K: np.ndarray,
    *,
    integrator: str = "heightmap",
    source: str = "",
) -> tuple[Plane | None, list[dict[str, Any]]]:
    """Table plane (fitted once on a ring around all items) and one measurement dict per item.

    Args:
        depth_m: (H, W) metric depth in metres.
        items: the food items, each with an (H, W) bool mask.
        K: (3, 3) intrinsics of the (H, W) grid.
        source: the image's name for error messages.

    Returns ``(None, [])`` without items. Each dict: ``item`` (1-based), ``source``, ``label``,
    ``mask``, ``volume_ml``, ``area_px``, ``mean_height_mm``.
    """
    if integrator not in VOLUME_METHODS:
        raise PredictionInputError(
            f"unknown integrator {integrator!r}; valid: {', '.join(sorted(VOLUME_METHODS))}"
        )
    if not items:
        return None, []
    food = np.logical_or.reduce([item.mask for item in items])
    try:
        plane = fit_table_plane(depth_m, K, food)
    except ValueError as error:
        raise PredictionInputError(
            f"{source}: cannot fit the table plane around the food: {error}"
        ) from error
    measurements = []
    for index, item in enumerate(items, start=1):
        measured = measure_food_item(depth_m, item.mask, K, plane, integrator)
        measurements.append(
            {
                "item": index,
                "source": item.source,
                "label": item.label,
                "mask": item.mask_file,
                "volume_ml": measured.volume_ml,
                "area_px": measured.area_px,
                "mean_height_mm": measured.mean_height_mm,
            }
        )
    return plane, measurements


class DepthPredictor:
    """Metric depth of one photo: ``predictor(rgb (H, W, 3) uint8) -> (H, W) float32 metres``."""

    def __init__(self, model: torch.nn.Module, image_processor, device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str, *, revision: str | None = None, device=None
    ) -> DepthPredictor:
        """A fine-tuned model folder or a Hub id of a DAV2-metric model, with its image processor."""
        from n5k_hf.evaluation import load_model_and_processor

        model, processor = load_model_and_processor(model_name_or_path, revision=revision)
        return cls(model, processor, device)

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from n5k_hf.evaluation import predict_depth_m

        pixel_values = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"].to(self.device)
        depth_m = predict_depth_m(self.model, pixel_values, tuple(rgb.shape[:2]))
        return depth_m[0].float().cpu().numpy()


def save_depth_png(depth_m: np.ndarray, path: Path) -> Path:
    """Write (H, W) metres as a 16-bit PNG in 1e-4 m units (0 = invalid), like Nutrition5k's depth_raw."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_depth_png(depth_m_to_raw(depth_m)))
    return path


@dataclass(frozen=True)
class PredictionJob:
    """Checked inputs of :func:`run_prediction`: images, their food items (empty = find them in the
    predicted depth), where to save each depth PNG, the camera flags and the integrator."""

    images: tuple[LoadedImage, ...]
    items: tuple[tuple[FoodItemMask, ...], ...]
    depth_paths: tuple[Path | None, ...]
    fx_px: float | None = None
    fy_px: float | None = None
    fov_deg: float | None = None
    integrator: str = "heightmap"


def prepare_prediction(
    image_paths: Sequence[str | Path],
    *,
    mask_paths: Sequence[str | Path] = (),
    fx_px: float | None = None,
    fy_px: float | None = None,
    fov_deg: float | None = None,
    integrator: str = "heightmap",
    save_depth_dir: str | Path | None = None,
) -> PredictionJob:
    """Reads and checks every input (images, masks, flags) before any model is loaded or run.

    Raises PredictionInputError naming the file or flag (missing image, non-image file, mask of
    another size than its image, empty mask, --fx without --fy, ...).
    """
    if not image_paths:
        raise PredictionInputError("no image given")
    if integrator not in VOLUME_METHODS:
        raise PredictionInputError(
            f"unknown integrator {integrator!r}; valid: {', '.join(sorted(VOLUME_METHODS))}"
        )
    resolve_intrinsics(640, 480, fx_px=fx_px, fy_px=fy_px, fov_deg=fov_deg)  # flag errors first
    images = tuple(load_image(path) for path in image_paths)
    masks_per_image = assign_masks([image.path for image in images], [Path(path) for path in mask_paths])
    items = tuple(tuple(items_from_mask_files(masks, image)) for image, masks in zip(images, masks_per_image))
    depth_paths: tuple[Path | None, ...] = (None,) * len(images)
    if save_depth_dir is not None:
        stems = [image.path.stem for image in images]
        duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
        if duplicates:
            raise PredictionInputError(
                f"--save-depth: several images are named {', '.join(duplicates)}; rename them"
            )
        depth_paths = tuple(Path(save_depth_dir) / f"{stem}_depth.png" for stem in stems)
    return PredictionJob(images, items, depth_paths, fx_px, fy_px, fov_deg, integrator)


def _items_from_depth(depth_m: np.ndarray, K: np.ndarray, image: LoadedImage) -> list[FoodItemMask]:
    try:
        found = depth_food_labels(depth_m, K)
    except ValueError as error:
        raise PredictionInputError(
            f"{image.path}: cannot find food in the predicted depth: {error}"
        ) from error
    if not found.any():
        logger.warning("%s: no mask given and no food found in the predicted depth", image.path)
    return [FoodItemMask(found == index, "depth_mask", index) for index in range(1, int(found.max()) + 1)]


def run_prediction(job: PredictionJob, depth_predictor: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Volume of each food item in each image of ``job``.

    ``depth_predictor`` maps (H, W, 3) uint8 RGB to (H, W) metric depth in metres (a
    :class:`DepthPredictor`). Returns ``{"integrator", "images": [...]}`` with, per image: ``image``,
    ``width``, ``height``, ``K`` (3x3), ``K_source`` (`K_SOURCES`), ``focal_length_35mm`` (EXIF, or
    None), ``table_plane`` (nx, ny, nz, d) or None, ``total_volume_ml``, ``items`` (see
    :func:`measure_items`) and, when saved, ``depth_png``.
    """
    results = []
    for image, items, depth_path in zip(job.images, job.items, job.depth_paths):
        height, width = image.hw
        K, K_source = resolve_intrinsics(
            width,
            height,
            fx_px=job.fx_px,
            fy_px=job.fy_px,
            fov_deg=job.fov_deg,
            focal_35mm=image.focal_length_35mm,
        )
        if K_source == "nutrition5k_default":
            logger.warning(
                "%s: no --fx/--fy, --fov-deg or EXIF 35 mm focal length; using the Nutrition5k camera scaled "
                "to %dx%d (volumes are only right for a similar camera and distance)",
                image.path,
                width,
                height,
            )
        depth_m = np.asarray(depth_predictor(image.rgb), dtype=np.float32)
        if depth_m.shape != (height, width):
            raise RuntimeError(
                f"{image.path}: the depth predictor returned {depth_m.shape}, expected {(height, width)}"
            )
        image_items = list(items) if items else _items_from_depth(depth_m, K, image)
        plane, measurements = measure_items(
            depth_m, image_items, K, integrator=job.integrator, source=str(image.path)
        )
        entry: dict[str, Any] = {
            "image": str(image.path),
            "width": width,
            "height": height,
            "K": np.asarray(K, dtype=float).tolist(),
            "K_source": K_source,
            "focal_length_35mm": image.focal_length_35mm,
            "table_plane": None if plane is None else plane.as_array().tolist(),
            "total_volume_ml": float(sum(item["volume_ml"] for item in measurements)),
            "items": measurements,
        }
        if depth_path is not None:
            entry["depth_png"] = str(save_depth_png(depth_m, depth_path))
        results.append(entry)
    return {"integrator": job.integrator, "images": results}


def predict_volumes(
    image_paths: Sequence[str | Path], depth_predictor: Callable[[np.ndarray], np.ndarray], **options: Any
) -> dict[str, Any]:
    """:func:`run_prediction` of :func:`prepare_prediction` (``options``: its keyword arguments)."""
    return run_prediction(prepare_prediction(image_paths, **options), depth_predictor)
