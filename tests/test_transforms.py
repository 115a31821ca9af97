"""Augmentation keeps geometry exact: the heightmap volume survives rot90, flips and resized crops."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from n5k_hf.data.transforms import EvalTransform, TrainTransform, TransformedDataset, model_input_hw
from n5k_hf.geometry import integrate_volume_ml
from n5k_hf.modeling import build_image_processor


def test_model_input_size_matches_the_dav2_processor():
    assert model_input_hw(480, 640, 518) == (518, 686)
    assert model_input_hw(480, 640, 126) == (126, 168)
    assert model_input_hw(640, 480, 126) == (168, 126)


def _inside(mask: np.ndarray) -> bool:
    return mask.any() and not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


@pytest.mark.parametrize("image_size", [126, 252])
def test_augmented_volume_equals_unaugmented(converted_dataset_dir, image_size):
    train = datasets.load_from_disk(str(converted_dataset_dir))["train"]
    transform = TrainTransform(image_size, crop_scale_min=0.6, color_jitter=0.2)
    errors_pct = []
    for index in range(10):
        row = train[index]
        for draw in range(4):
            sample = transform(row, seed=1000 * index + draw)
            food = sample["food_mask"].numpy()
            assert (
                sample["pixel_values"].shape[-2:]
                == sample["depth_m"].shape
                == model_input_hw(480, 640, image_size)
            )
            if not _inside(food):
                continue  # the crop cut the food: its visible volume is smaller by design
            volume = integrate_volume_ml(
                sample["depth_m"].numpy(), food, sample["K"].numpy().astype(np.float64)
            )
            errors_pct.append(100 * (volume - row["volume_ml"]) / row["volume_ml"])
    assert len(errors_pct) >= 20
    assert np.max(np.abs(errors_pct)) < 3.0, np.round(errors_pct, 2)


def test_every_geometric_transform_is_exercised_and_replayed(converted_dataset_dir):
    train = datasets.load_from_disk(str(converted_dataset_dir))["train"]
    transform = TrainTransform(126)
    seen = set()
    row = train[0]
    for seed in range(40):
        transform.augment.set_random_seed(seed)
        out = transform.augment(
            image=np.zeros((480, 640, 3), np.uint8),
            depth=np.zeros((480, 640), np.float32),
            food=np.zeros((480, 640), np.uint8),
        )
        seen.update(name for name, _ in out["applied_transforms"])
    assert {"RandomRotate90", "HorizontalFlip", "VerticalFlip", "RandomResizedCrop"} <= seen
    first, second = transform(row, seed=5), transform(row, seed=5)
    assert all(
        np.array_equal(first[key], second[key], equal_nan=True) for key in ("pixel_values", "depth_m", "K")
    )


def test_transformed_dataset_seeds_by_epoch_and_index(converted_dataset_dir):
    train = datasets.load_from_disk(str(converted_dataset_dir))["train"]
    dataset = TransformedDataset(train, TrainTransform(126), seed=1)
    a = dataset[3]["pixel_values"]
    assert np.array_equal(a, dataset[3]["pixel_values"])
    dataset.set_epoch(1)
    assert not np.array_equal(a, dataset[3]["pixel_values"])
    assert int(dataset[3]["index"]) == 3


def test_eval_transform_keeps_labels_at_stored_size(converted_dataset_dir):
    test = datasets.load_from_disk(str(converted_dataset_dir))["test"]
    sample = EvalTransform(build_image_processor(size=126))(test[0])
    assert tuple(sample["pixel_values"].shape) == (3, 126, 168)
    assert tuple(sample["depth_m"].shape) == (480, 640)
    assert np.isnan(sample["depth_m"].numpy()[~sample["valid_mask"].numpy()]).all()
    volume = integrate_volume_ml(
        sample["depth_m"].numpy(), sample["food_mask"].numpy(), sample["K"].numpy().astype(float)
    )
    assert volume == pytest.approx(test[0]["volume_ml"], rel=1e-4)
