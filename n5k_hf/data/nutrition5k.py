"""The real Nutrition5k dataset: its folder layout, split files, dish metadata and plate groups.

Layout under the dataset root (as published; only ``metadata/`` and ``dish_ids/`` are small)::

    imagery/realsense_overhead/dish_<id>/{rgb.png, depth_raw.png, depth_color.png}
    dish_ids/splits/{depth,rgb}_{train,test}_ids.txt
    metadata/dish_metadata_cafe{1,2}.csv
    metadata/ingredients_metadata.csv

A dish id is the folder name itself, ``dish_<unix timestamp in seconds>`` (e.g. ``dish_1561662216``).

Dish metadata rows have no header and no ingredient count: 6 fields
``dish_id,total_calories,total_mass,total_fat,total_carb,total_protein`` then 7 per ingredient
``ingr_id,ingr_name,grams,calories,fat,carb,protein``. No ingredient name in the real files holds a
comma or a quote (every row of both files is exactly 6 + 7k fields long), so a plain comma split is
the format; a row of any other length is reported as an error row, never guessed at.

Units: masses in grams, energy in kcal, fat/carb/protein in grams.

Missing values: ``dish_metadata_cafe2.csv`` stores 0 for total calories, fat, carb and protein of
every dish (only ``total_mass`` and the per-ingredient values are filled). Those four totals of a
cafe 2 dish are therefore stored as ``None`` (missing), never 0; ``total_mass`` and all
per-ingredient values are kept as written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DISH_ID_PATTERN = re.compile(r"^dish_[0-9]+$")
SPLIT_NAMES = ("depth_train", "depth_test", "rgb_train", "rgb_test")
CAFES = (1, 2)

DISH_FIELD_COUNT = 6
INGREDIENT_FIELD_COUNT = 7

# Plate grouping (see plate_groups): incremental scans of one plate in the real data are 20 to
# 60 s apart; 300 s leaves room for slow additions without merging unrelated plates.
PLATE_MAX_GAP_S = 300
# A re-scan of the same plate may weigh a little less (crumbs, the scale's 1 g steps): the real files
# hold 5 such pairs, 1-3 g lighter; the next smallest drop between nested scans is 8 g.
PLATE_MASS_TOLERANCE_G = 3.0


class Nutrition5kLayoutError(FileNotFoundError):
    """A file or folder that the Nutrition5k layout requires is missing."""


class SplitFileError(ValueError):
    """A split file holds a malformed or duplicated dish id."""


@dataclass(frozen=True)
class Ingredient:
    """One ingredient of a dish: ``id`` like ``ingr_0000000508``; grams, kcal and grams of macros."""

    id: str
    name: str
    grams: float
    calories: float
    fat: float
    carb: float
    protein: float


@dataclass(frozen=True)
class DishMetadata:
    """Totals of one dish (grams, kcal); ``None`` marks a total the dataset does not provide."""

    dish_id: str
    total_calories: float | None
    total_mass: float | None
    total_fat: float | None
    total_carb: float | None
    total_protein: float | None
    ingredients: tuple[Ingredient, ...]
    cafe: int

    @property
    def ingredient_ids(self) -> frozenset[str]:
        return frozenset(ingredient.id for ingredient in self.ingredients)


@dataclass(frozen=True)
class MetadataRowError:
    """A metadata row that could not be parsed; ``line_number`` is 1-based."""

    path: Path
    line_number: int
    dish_id: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number} ({self.dish_id or 'no dish id'}): {self.message}"


@dataclass
class MetadataParseResult:
    """Parsed dishes by id, and every row that was rejected (with its reason)."""

    dishes: dict[str, DishMetadata] = field(default_factory=dict)
    errors: list[MetadataRowError] = field(default_factory=list)


class MetadataParseError(ValueError):
    """Raised by ``Nutrition5kLayout.load_metadata`` when rows were rejected."""

    def __init__(self, errors: list[MetadataRowError]):
        self.errors = errors
        shown = "\n".join(str(error) for error in errors[:10])
        more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
        super().__init__(f"{len(errors)} malformed dish metadata rows:\n{shown}{more}")


def validate_dish_id(dish_id: str) -> str:
    """Return ``dish_id`` if it looks like ``dish_<digits>``; raise ``ValueError`` otherwise."""
    if not isinstance(dish_id, str) or not DISH_ID_PATTERN.match(dish_id):
        raise ValueError(f"invalid dish id {dish_id!r}: expected 'dish_<digits>', e.g. 'dish_1561662216'")
    return dish_id


def dish_timestamp_s(dish_id: str) -> int:
    """The unix timestamp (seconds) encoded in a dish id: ``dish_1561662216`` -> 1561662216."""
    return int(validate_dish_id(dish_id)[len("dish_") :])


class Nutrition5kLayout:
    """Paths of a Nutrition5k copy rooted at ``root`` (raises if ``root`` is not a folder)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise Nutrition5kLayoutError(f"Nutrition5k root folder not found: {self.root}")

    @property
    def overhead_dir(self) -> Path:
        return self.root / "imagery" / "realsense_overhead"

    @property
    def splits_dir(self) -> Path:
        return self.root / "dish_ids" / "splits"

    @property
    def metadata_dir(self) -> Path:
        return self.root / "metadata"

    @property
    def ingredients_metadata_path(self) -> Path:
        return self.metadata_dir / "ingredients_metadata.csv"

    def dish_metadata_path(self, cafe: int) -> Path:
        if cafe not in CAFES:
            raise ValueError(f"cafe must be one of {CAFES}, got {cafe!r}")
        return self.metadata_dir / f"dish_metadata_cafe{cafe}.csv"

    def dish_dir(self, dish_id: str) -> Path:
        return self.overhead_dir / validate_dish_id(dish_id)

    def rgb_path(self, dish_id: str) -> Path:
        return self.dish_dir(dish_id) / "rgb.png"

    def depth_raw_path(self, dish_id: str) -> Path:
        return self.dish_dir(dish_id) / "depth_raw.png"

    def depth_color_path(self, dish_id: str) -> Path:
        return self.dish_dir(dish_id) / "depth_color.png"

    def split_path(self, split_name: str) -> Path:
        if split_name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split_name!r}; expected one of {SPLIT_NAMES}")
        return self.splits_dir / f"{split_name}_ids.txt"

    def split_ids(self, split_name: str) -> list[str]:
        """Dish ids of an official split (``depth_train``, ``depth_test``, ``rgb_train``, ``rgb_test``)."""
        return read_split_ids(self.split_path(split_name))

    def parse_all_metadata(self) -> MetadataParseResult:
        """Both cafes' dish metadata merged; a dish id present in both files is an error row."""
        merged = MetadataParseResult()
        for cafe in CAFES:
            path = self.dish_metadata_path(cafe)
            result = parse_dish_metadata(path, cafe)
            merged.errors.extend(result.errors)
            for dish_id, dish in result.dishes.items():
                if dish_id in merged.dishes:
                    merged.errors.append(
                        MetadataRowError(path, 0, dish_id, "dish id also present in another cafe's file")
                    )
                    continue
                merged.dishes[dish_id] = dish
        return merged

    def load_metadata(self) -> dict[str, DishMetadata]:
        """All dishes of both cafes by id; raises ``MetadataParseError`` listing any rejected rows."""
        result = self.parse_all_metadata()
        if result.errors:
            raise MetadataParseError(result.errors)
        return result.dishes


def read_split_ids(path: Path | str) -> list[str]:
    """Dish ids of a split file in file order (one per line, blank lines skipped).

    Raises ``Nutrition5kLayoutError`` if the file is missing and ``SplitFileError`` naming the file
    and line numbers for a malformed or a duplicated id.
    """
    path = Path(path)
    if not path.is_file():
        raise Nutrition5kLayoutError(f"split file not found: {path}")
    ids: list[str] = []
    first_line: dict[str, int] = {}
    problems: list[str] = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        dish_id = line.strip()
        if not dish_id:
            continue
        if not DISH_ID_PATTERN.match(dish_id):
            problems.append(f"line {line_number}: malformed dish id {dish_id!r}")
        elif dish_id in first_line:
            problems.append(f"line {line_number}: duplicate {dish_id} (first on line {first_line[dish_id]})")
        else:
            first_line[dish_id] = line_number
            ids.append(dish_id)
    if problems:
        raise SplitFileError(f"{path}: " + "; ".join(problems))
    return ids


def _parse_number(text: str, what: str) -> float:
    value = float(text)  # ValueError for non-numeric text is turned into a row error by the caller
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {text!r}")
    return value


def _parse_dish_row(fields: list[str], cafe: int) -> DishMetadata:
    if len(fields) < DISH_FIELD_COUNT + INGREDIENT_FIELD_COUNT or (
        (len(fields) - DISH_FIELD_COUNT) % INGREDIENT_FIELD_COUNT
    ):
        raise ValueError(
            f"row has {len(fields)} fields; expected 6 dish fields plus 7 per ingredient (13, 20, 27, ...)"
        )
    dish_id = validate_dish_id(fields[0])
    totals: list[float | None] = []
    for name, text in zip(
        ("total_calories", "total_mass", "total_fat", "total_carb", "total_protein"), fields[1:6]
    ):
        try:
            totals.append(_parse_number(text, name))
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    ingredients = []
    for start in range(DISH_FIELD_COUNT, len(fields), INGREDIENT_FIELD_COUNT):
        ingredient_id, name, *numbers = fields[start : start + INGREDIENT_FIELD_COUNT]
        if not ingredient_id.startswith("ingr_"):
            raise ValueError(
                f"field {start + 1}: expected an ingredient id 'ingr_...', got {ingredient_id!r}"
            )
        values = []
        for offset, (label, text) in enumerate(zip(("grams", "calories", "fat", "carb", "protein"), numbers)):
            try:
                values.append(_parse_number(text, label))
            except ValueError as error:
                raise ValueError(f"field {start + 3 + offset} ({name} {label}): {error}") from None
        ingredients.append(Ingredient(ingredient_id, name, *values))
    if cafe == 2:
        # cafe 2 rows hold 0 for every total except mass: missing, not zero (see module docstring).
        totals = [None, totals[1], None, None, None]
    return DishMetadata(dish_id, *totals, ingredients=tuple(ingredients), cafe=cafe)


def parse_dish_metadata(path: Path | str, cafe: int) -> MetadataParseResult:
    """Parse one ``dish_metadata_cafe{1,2}.csv``.

    Every row that is not 6 + 7k fields, has a malformed id or a non-numeric / negative number,
    or repeats a dish id already parsed, becomes a ``MetadataRowError`` with its 1-based line
    number; the other rows are still parsed. For ``cafe == 2`` the calorie/fat/carb/protein totals
    are ``None`` (the file stores 0 for all of them). Raises ``Nutrition5kLayoutError`` if the
    file is missing.
    """
    path = Path(path)
    if cafe not in CAFES:
        raise ValueError(f"cafe must be one of {CAFES}, got {cafe!r} (for {path})")
    if not path.is_file():
        raise Nutrition5kLayoutError(f"dish metadata file not found: {path}")
    result = MetadataParseResult()
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        dish_id = fields[0].strip()
        try:
            dish = _parse_dish_row(fields, cafe)
        except ValueError as error:
            result.errors.append(MetadataRowError(path, line_number, dish_id, str(error)))
            continue
        if dish.dish_id in result.dishes:
            result.errors.append(MetadataRowError(path, line_number, dish_id, "duplicate dish id"))
            continue
        result.dishes[dish.dish_id] = dish
    return result


def _same_plate(earlier: DishMetadata, later: DishMetadata) -> bool:
    return earlier.ingredient_ids <= later.ingredient_ids and (
        earlier.total_mass is None
        or later.total_mass is None
        or later.total_mass >= earlier.total_mass - PLATE_MASS_TOLERANCE_G
    )


def plate_groups(
    dish_ids: list[str], metadata: dict[str, DishMetadata], *, max_gap_s: int = PLATE_MAX_GAP_S
) -> list[list[str]]:
    """Group the incremental scans of one plate (Nutrition5k scanned a plate after each addition).

    Rule: sort ``dish_ids`` by the timestamp in the id; a dish joins the group of the dish just
    before it when (1) it was scanned at most ``max_gap_s`` seconds later, (2) its ingredient-id
    set contains every ingredient of the previous dish, and (3) its ``total_mass`` is not smaller by
    more than `PLATE_MASS_TOLERANCE_G` (a re-weighing of the same plate). Conditions (2) and (3) keep apart the 2019 sessions in which single items were scanned on
    their own plates and then combined (a combination followed by a single item is not nested).

    Measured on the real files (depth_train + depth_test, 3265 dishes): 1241 groups, of which 8
    (28 dishes) hold both train and test dishes; all 8 are genuine same-plate sequences (repeated
    scans of identical or 1 g lower mass and the same ingredients) that the official split itself
    breaks. Only the previous scan is compared: a plate scanned between two scans of another plate
    (14 such interleavings in 2019 sessions of single items) starts a new group.

    Returns groups in time order, each group in time order. Raises ``KeyError`` naming the ids
    that have no metadata.
    """
    missing = [dish_id for dish_id in dish_ids if dish_id not in metadata]
    if missing:
        raise KeyError(f"{len(missing)} dish ids have no metadata, e.g. {missing[:5]}")
    ordered = sorted(dict.fromkeys(dish_ids), key=dish_timestamp_s)
    groups: list[list[str]] = []
    for dish_id in ordered:
        if groups:
            previous = groups[-1][-1]
            gap_s = dish_timestamp_s(dish_id) - dish_timestamp_s(previous)
            if gap_s <= max_gap_s and _same_plate(metadata[previous], metadata[dish_id]):
                groups[-1].append(dish_id)
                continue
        groups.append([dish_id])
    return groups


def split_train_validation(
    train_ids: list[str],
    metadata: dict[str, DishMetadata],
    val_fraction: float = 0.1,
    seed: int = 42,
) -> tuple[list[str], list[str]]:
    """Split ``train_ids`` into (train, validation) without separating scans of one plate.

    Plate groups (``plate_groups``) are shuffled with ``numpy.random.default_rng(seed)`` and
    taken greedily into validation while they fit within ``round(val_fraction * len(train_ids))``
    dishes. Both returned lists keep the order of ``train_ids``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    groups = plate_groups(train_ids, metadata)
    target = round(val_fraction * len(train_ids))
    rng = np.random.default_rng(seed)
    validation: set[str] = set()
    for index in rng.permutation(len(groups)):
        group = groups[index]
        if len(validation) + len(group) <= target:
            validation.update(group)
        if len(validation) == target:
            break
    train = [dish_id for dish_id in train_ids if dish_id not in validation]
    val = [dish_id for dish_id in train_ids if dish_id in validation]
    return train, val
