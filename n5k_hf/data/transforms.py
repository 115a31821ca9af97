"""Per-sample transforms from dataset rows to model inputs, keeping the intrinsics exact.

Both transforms map one decoded dataset row to one sample of tensors:

- ``pixel_values`` (3, h, w) float32, ImageNet-normalised, h and w multiples of 14;
- ``depth_m`` (H', W') float32 metres, NaN where the sensor had no reading;
- ``valid_mask`` (H', W') bool, ``food_mask`` (H', W') bool, ``ring_mask`` (H', W') bool (table
  pixels around the food, for the plane loss);
- ``K`` (3, 3) float32 for the (H', W') label grid; ``volume_ml`` () float32 (the dataset's
  reference volume); ``dish_id`` (str).

:class:`TrainTransform` augments image, depth and masks jointly with albumentations (RandomRotate90,
flips, RandomResizedCrop, ColorJitter; depth and masks with exact nearest-neighbour sampling) and
updates K for every geometric step it applied, so labels and K stay at the model's resolution.
:class:`EvalTransform` only runs the model's image processor: labels stay at the stored resolution
and the prediction is upsampled to them, as in the official DAV2 evaluation.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from n5k_hf.geometry.depth import depth_raw_to_m
from n5k_hf.geometry.intrinsics import (
    crop_intrinsics,
    hflip_intrinsics,
    resize_intrinsics,
    rot90_intrinsics,
    vflip_intrinsics,
)
from n5k_hf.geometry.plane import ring_widths_px, table_ring_mask

PATCH_SIZE = 14


def model_input_hw(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Aspect-keeping size whose shorter side is ``short_side`` and both sides multiples of 14.

    Rounds like the DPT image processor (nearest multiple): 480x640 at 518 -> 518x686.
    """
    scale = short_side / min(height, width)
    return (
        max(PATCH_SIZE, round(height * scale / PATCH_SIZE) * PATCH_SIZE),
        max(PATCH_SIZE, round(width * scale / PATCH_SIZE) * PATCH_SIZE),
    )


def decode_row_arrays(image: Any, depth: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoded dataset values -> (rgb (H,W,3) uint8, depth_m (H,W) float32 NaN-invalid, food (H,W) bool)."""
    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
    raw = np.asarray(depth)
    if raw.dtype != np.uint16:
        raise ValueError(f"depth must be a 16-bit image (1e-4 m units), got dtype {raw.dtype}")
    food = np.asarray(mask) > 0
    if food.ndim == 3:
        food = food.any(axis=-1)
    if not (rgb.shape[:2] == raw.shape == food.shape):
        raise ValueError(f"image {rgb.shape[:2]}, depth {raw.shape} and mask {food.shape} differ in size")
    return rgb, depth_raw_to_m(raw), food


_MEAN_255 = np.asarray(IMAGENET_DEFAULT_MEAN, dtype=np.float32) * 255.0
_INV_STD_255 = 1.0 / (np.asarray(IMAGENET_DEFAULT_STD, dtype=np.float32) * 255.0)


def normalize_image(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised with the ImageNet mean/std of the DAV2 processor."""
    normalised = (rgb.astype(np.float32) - _MEAN_255) * _INV_STD_255
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def _label_tensors(depth_m: np.ndarray, food: np.ndarray, K: np.ndarray) -> dict[str, torch.Tensor]:
    valid = np.isfinite(depth_m) & (depth_m > 0)
    ring = table_ring_mask(food, *ring_widths_px(K)) & valid if food.any() else valid.copy()
    return {
        "depth_m": torch.from_numpy(np.where(valid, depth_m, np.nan).astype(np.float32)),
        "valid_mask": torch.from_numpy(valid),
        "food_mask": torch.from_numpy(food),  # not & valid: the volume integrator fills dropouts inside it
        "ring_mask": torch.from_numpy(ring),
        "K": torch.from_numpy(np.asarray(K, dtype=np.float32)),
    }


def apply_geometric_params(
    K: np.ndarray, applied: list[tuple[str, dict]], hw: tuple[int, int], out_hw
) -> np.ndarray:
    """Replays albumentations' applied geometric transforms on K.

    ``applied`` is ``Compose(save_applied_params=True)``'s ``applied_transforms``; ``hw`` the input
    (H, W). Pixel-centre convention throughout (see ``n5k_hf.geometry.intrinsics``).
    """
    height, width = hw
    for name, params in applied:
        if name == "RandomRotate90":
            K = rot90_intrinsics(K, int(params["factor"]), height, width)
            if params["factor"] % 2:
                height, width = width, height
        elif name == "HorizontalFlip":
            K = hflip_intrinsics(K, width)
        elif name == "VerticalFlip":
            K = vflip_intrinsics(K, height)
        elif name == "RandomResizedCrop":
            x_min, y_min, x_max, y_max = params["crop_coords"]
            K = crop_intrinsics(K, x_min, y_min)
            K = resize_intrinsics(K, (y_max - y_min, x_max - x_min), out_hw)
            height, width = out_hw
        elif name in GEOMETRIC_TRANSFORMS:
            raise ValueError(f"no K update for geometric transform {name}")
    return K


GEOMETRIC_TRANSFORMS = frozenset({"RandomRotate90", "HorizontalFlip", "VerticalFlip", "RandomResizedCrop"})


class TrainTransform:
    """Joint augmentation of image, depth and masks at the model's input size, K updated."""

    def __init__(
        self,
        image_size: int,
        *,
        stored_hw: tuple[int, int] = (480, 640),
        crop_scale_min: float = 0.6,
        color_jitter: float = 0.2,
    ):
        self.out_hw = model_input_hw(*stored_hw, image_size)
        ratio = self.out_hw[1] / self.out_hw[0]
        self.augment = A.Compose(
            [
                A.RandomRotate90(p=0.5),
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.RandomResizedCrop(
                    size=self.out_hw,
                    scale=(crop_scale_min, 1.0),
                    ratio=(ratio * 0.9, ratio / 0.9),
                    interpolation=cv2.INTER_AREA,
                    mask_interpolation=cv2.INTER_NEAREST_EXACT,
                    p=1.0,
                ),
                A.ColorJitter(
                    brightness=color_jitter,
                    contrast=color_jitter,
                    saturation=color_jitter,
                    hue=color_jitter / 4,
                    p=0.8,
                ),
            ],
            additional_targets={"depth": "mask", "food": "mask"},
            save_applied_params=True,
        )

    def __call__(self, row: dict[str, Any], seed: int) -> dict[str, Any]:
        """One dataset row -> one training sample; the augmentation is a pure function of ``seed``."""
        rgb, depth_m, food = decode_row_arrays(row["image"], row["depth"], row["mask"])
        self.augment.set_random_seed(seed)
        # Depth and masks are sampled nearest-neighbour (exact values, no mixing across edges).
        out = self.augment(image=rgb, depth=np.nan_to_num(depth_m, nan=0.0), food=food.astype(np.uint8))
        K = apply_geometric_params(
            np.asarray(row["K"], dtype=np.float64), out["applied_transforms"], rgb.shape[:2], self.out_hw
        )
        depth_out = out["depth"].astype(np.float32)
        depth_out[depth_out <= 0] = np.nan
        sample = _label_tensors(depth_out, out["food"] > 0, K)
        sample["pixel_values"] = normalize_image(out["image"])
        sample["volume_ml"] = torch.tensor(row["volume_ml"], dtype=torch.float32)
        sample["dish_id"] = row["dish_id"]
        return sample


class EvalTransform:
    """Model inputs from the image processor; labels, masks and K at the stored resolution."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, row: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """One dataset row -> one evaluation sample (``seed`` is ignored: nothing random)."""
        rgb, depth_m, food = decode_row_arrays(row["image"], row["depth"], row["mask"])
        sample = _label_tensors(depth_m, food, np.asarray(row["K"]))
        sample["pixel_values"] = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"][0]
        sample["volume_ml"] = torch.tensor(row["volume_ml"], dtype=torch.float32)
        sample["dish_id"] = row["dish_id"]
        return sample


class TransformedDataset(torch.utils.data.Dataset):
    """A map-style view of a ``datasets.Dataset`` that applies a transform and adds ``index``.

    The augmentation seed of row ``i`` in epoch ``e`` is derived from ``(seed, e, i)`` only, so the
    samples do not depend on worker count, process count or where a resumed run restarted.
    """

    def __init__(self, dataset, transform, *, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        sample = self.transform(self.dataset[int(index)], sample_seed)
        sample["index"] = torch.tensor(int(index))
        return sample


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks tensors (all samples share one size) and keeps ``dish_id`` as a list."""
    batch: dict[str, Any] = {"dish_id": [s["dish_id"] for s in samples]}
    for key in samples[0]:
        if key != "dish_id":
            batch[key] = torch.stack([s[key] for s in samples])
    return batch
