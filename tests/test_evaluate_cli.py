"""scripts/evaluate.py: report files, 1 vs 2 processes (torchrun) give identical metrics, card update, errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from n5k_hf.benchmarks.evaluate import synthetic_eval_dataset
from n5k_hf.cli import exit_on_user_error

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = ROOT / "scripts" / "evaluate.py"
NUM_DISHES = 5  # odd with batch size 2: the 2-process run pads its last batch, gather_for_metrics drops it


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """run_evaluation creates an Accelerator in this process; leave no shared state to other tests."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def split() -> datasets.Dataset:
    return synthetic_eval_dataset(NUM_DISHES, 7, height_px=240, width_px=320)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, split) -> Path:
    directory = tmp_path_factory.mktemp("dataset") / "converted"
    datasets.DatasetDict({"test": split}).save_to_disk(str(directory))
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from n5k_hf.modeling import build_image_processor, load_depth_model, save_model_for_pipeline

    directory = tmp_path_factory.mktemp("model") / "tiny"
    return save_model_for_pipeline(
        load_depth_model(model_config="tiny"), build_image_processor(size=126), directory
    )


def _evaluate_in_process(argv: list[str]) -> int:
    script = _load_script("evaluate")
    return exit_on_user_error(lambda: script.main(argv))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_one_and_two_processes_write_identical_metrics_and_the_card_is_updated(
    tmp_path, dataset_dir, model_dir, split
):
    card_model = tmp_path / "finetuned"
    shutil.copytree(model_dir, card_model)
    training_config = {"model_name_or_path": "tiny-test-base", "model_config": "tiny", "learning_rate": 5e-4}
    (card_model / "finetune_config.yaml").write_text(yaml.safe_dump(training_config))
    common = ["--dataset", str(dataset_dir), "--split", "test", "--batch-size", "2"]
    one, two = tmp_path / "one_process", tmp_path / "two_processes"

    code = _evaluate_in_process(
        ["--model", str(card_model), "--output-dir", str(one), "--update-card", *common]
    )
    assert code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
            *(str(EVALUATE), "--model", str(model_dir), "--output-dir", str(two), *common),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]

    metrics_one = json.loads((one / "metrics.json").read_text())
    metrics_two = json.loads((two / "metrics.json").read_text())
    run_one, run_two = metrics_one.pop("evaluation"), metrics_two.pop("evaluation")
    assert (run_one["num_processes"], run_two["num_processes"]) == (1, 2)
    assert metrics_one == metrics_two  # every float bit-identical
    assert (one / "per_dish.csv").read_bytes() == (two / "per_dish.csv").read_bytes()

    rows = _read_csv(one / "per_dish.csv")
    assert [row["dish_id"] for row in rows] == list(split["dish_id"])
    np.testing.assert_array_equal(
        [float(row["reference_volume_ml"]) for row in rows], np.float32(split["volume_ml"])
    )
    errors = np.array([float(row["abs_error_ml"]) for row in rows])
    assert metrics_one["num_dishes"] == metrics_one["num_evaluated"] == NUM_DISHES
    assert metrics_one["volume_mae_ml"] == pytest.approx(errors.mean(), rel=1e-12)
    assert metrics_one["depth"]["food"]["num_images"] == NUM_DISHES
    plots = sorted(path.name for path in (one / "plots").iterdir())
    assert {"volume_scatter.png", "ape_histogram.png"} <= set(plots)
    assert sum(name.startswith("depth_dish_") for name in plots) == 3

    card = (card_model / "README.md").read_text()
    assert "learning_rate: 0.0005" in card  # the training config kept from finetune_config.yaml
    assert f"| Volume MAE (mL) | {metrics_one['volume_mae_ml']:.4g} |" in card
    assert (card_model / "volume_scatter.png").is_file()


def _error_line(capsys) -> str:
    """The one ``error:`` line, last on stderr (progress bars of loading may come before it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def test_missing_model_folder_exits_2_with_one_line(tmp_path, dataset_dir, capsys):
    missing = tmp_path / "no_such_model"
    argv = ["--model", str(missing), "--dataset", str(dataset_dir), "--output-dir", str(tmp_path / "out")]
    assert _evaluate_in_process(argv) == 2
    assert str(missing) in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_dataset_without_a_required_column_exits_2_naming_it(tmp_path, split, model_dir, capsys):
    broken = tmp_path / "no_mask"
    datasets.DatasetDict({"test": split.remove_columns("mask")}).save_to_disk(str(broken))
    argv = ["--model", str(model_dir), "--dataset", str(broken), "--output-dir", str(tmp_path / "out")]
    assert _evaluate_in_process(argv) == 2
    line = _error_line(capsys)
    assert "mask" in line and "no_mask" in line


def test_model_whose_config_is_not_metric_exits_2(tmp_path, dataset_dir, model_dir, capsys):
    relative = tmp_path / "relative_model"
    shutil.copytree(model_dir, relative)
    config = json.loads((relative / "config.json").read_text())
    config["depth_estimation_type"] = "relative"
    (relative / "config.json").write_text(json.dumps(config))
    argv = ["--model", str(relative), "--dataset", str(dataset_dir), "--output-dir", str(tmp_path / "out")]
    assert _evaluate_in_process(argv) == 2
    line = _error_line(capsys)
    assert "relative_model" in line and "not 'metric'" in line
