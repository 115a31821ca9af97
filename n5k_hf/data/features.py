"""Schema of the converted Nutrition5k dataset (one row per dish).

Units: ``depth`` holds the original 16-bit PNG (uint16, 1e-4 m per unit, 0 = no reading);
``volume_ml`` in millilitres; ``total_mass`` and ingredient ``grams`` in grams; ``K`` in pixels
for the stored image size; ``plane`` = (nx, ny, nz, d) in metres, ``n . p + d = 0`` with ``n``
pointing towards the camera. Totals that Nutrition5k leaves empty (all of cafe2 except mass) are
``None``, never 0.
"""

from __future__ import annotations

import datasets

INGREDIENT_FEATURES = {
    "id": datasets.Value("string"),
    "name": datasets.Value("string"),
    "grams": datasets.Value("float32"),
    "calories": datasets.Value("float32"),
    "fat": datasets.Value("float32"),
    "carb": datasets.Value("float32"),
    "protein": datasets.Value("float32"),
}

DATASET_FEATURES = datasets.Features(
    {
        "dish_id": datasets.Value("string"),
        "image": datasets.Image(mode="RGB"),
        "depth": datasets.Image(),
        "mask": datasets.Image(),
        "K": datasets.Array2D(shape=(3, 3), dtype="float32"),
        "volume_ml": datasets.Value("float32"),
        "plane": datasets.Sequence(datasets.Value("float32"), length=4),
        "mask_source": datasets.Value("string"),
        "total_mass": datasets.Value("float32"),
        "total_calories": datasets.Value("float32"),
        "total_fat": datasets.Value("float32"),
        "total_carb": datasets.Value("float32"),
        "total_protein": datasets.Value("float32"),
        "ingredients": datasets.List(INGREDIENT_FEATURES),
        "cafe": datasets.Value("int32"),
    }
)

# Columns that training and evaluation read; a dataset without one of them is rejected by name.
REQUIRED_COLUMNS = ("dish_id", "image", "depth", "mask", "K", "volume_ml")

SPLITS = ("train", "validation", "test")
