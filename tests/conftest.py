"""Shared fixtures: one synthetic Nutrition5k tree and its converted dataset per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests never reach a hub; fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def synthetic_n5k_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 36-dish synthetic Nutrition5k tree (29 train+validation, 7 test), seed 3."""
    from n5k_hf.data.synthetic import make_synthetic_nutrition5k

    root = tmp_path_factory.mktemp("synthetic-n5k")
    make_synthetic_nutrition5k(root, 36, seed=3, num_workers=2)
    return root


@pytest.fixture(scope="session")
def converted_dataset_dir(synthetic_n5k_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synthetic_n5k_root`` converted with its ground-truth masks as external masks."""
    from n5k_hf.data.convert import convert_nutrition5k

    output_dir = tmp_path_factory.mktemp("converted") / "dataset"
    convert_nutrition5k(
        synthetic_n5k_root,
        output_dir,
        masks_dir=synthetic_n5k_root / "ground_truth" / "masks",
        val_fraction=0.2,
        num_proc=1,
        progress=False,
    )
    return output_dir
