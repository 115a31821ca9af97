"""Faults during training: non-finite losses are skipped and counted, then stop the run with a
checkpoint; bad recipes and datasets fail with one line naming the key or column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file

from n5k_hf.training.config import parse_config
from n5k_hf.training.loop import Finetuner, NonFiniteLossError
from tests.conftest import REPO_ROOT

SMOKE = REPO_ROOT / "recipes" / "smoke" / "config.yaml"


def _config(dataset_dir, output_dir, *extra):
    return parse_config(
        [
            "--config",
            str(SMOKE),
            f"--dataset_name_or_path={dataset_dir}",
            f"--output_dir={output_dir}",
            "--per_device_train_batch_size=4",
            "--run_test_evaluation=false",
            "--checkpointing_steps=None",
            *extra,
        ]
    )


class PoisonedLoss(torch.nn.Module):
    """Wraps the recipe's loss and returns NaN at the given optimiser steps (or always)."""

    def __init__(self, loss_fn, finetuner, bad_steps):
        super().__init__()
        self.loss_fn, self.finetuner, self.bad_steps = loss_fn, finetuner, bad_steps

    def forward(self, *args, **kwargs):
        loss, components = self.loss_fn(*args, **kwargs)
        if self.bad_steps == "all" or self.finetuner.state.global_step in self.bad_steps:
            loss = loss * torch.tensor(float("nan"))
        return loss, components


def _run_with_poison(config, bad_steps):
    finetuner = Finetuner(config)
    original_setup = finetuner.setup

    def setup():
        original_setup()
        finetuner.loss_fn = PoisonedLoss(finetuner.loss_fn, finetuner, bad_steps)

    finetuner.setup = setup
    return finetuner


def test_nonfinite_steps_are_skipped_counted_and_weights_stay_finite(converted_dataset_dir, tmp_path):
    finetuner = _run_with_poison(
        _config(converted_dataset_dir, tmp_path / "out", "--max_train_steps=6"), {1, 3}
    )
    result = finetuner.run()
    assert result.global_step == 6  # a skipped step still advances the schedule
    assert finetuner.state.nonfinite_steps_total == 2
    assert finetuner.state.nonfinite_steps_in_a_row == 0
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_consecutive_nonfinite_steps_stop_with_a_checkpoint(converted_dataset_dir, tmp_path):
    config = _config(
        converted_dataset_dir, tmp_path / "out", "--max_train_steps=20", "--max_consecutive_nonfinite_steps=3"
    )
    finetuner = _run_with_poison(config, "all")
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses"):
        finetuner.run()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert checkpoint.is_dir(), sorted(p.name for p in (tmp_path / "out").iterdir())
    finetuner.accelerator.end_training()


def _finetune_cli(*args):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / "finetune.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["--config", str(SMOKE), "--learning_rat=1"], "unknown flag --learning_rat"),
        (["--config", str(SMOKE), "--dataset_name_or_path=/no/such/folder"], "/no/such/folder"),
    ],
)
def test_finetune_bad_input_is_one_line(args, message):
    result = _finetune_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_dataset_missing_a_column_is_named(converted_dataset_dir, tmp_path):
    broken = datasets.load_from_disk(str(converted_dataset_dir))
    broken = datasets.DatasetDict({name: split.remove_columns("volume_ml") for name, split in broken.items()})
    broken.save_to_disk(str(tmp_path / "broken"))
    result = _finetune_cli("--config", str(SMOKE), f"--dataset_name_or_path={tmp_path / 'broken'}")
    assert result.returncode == 2
    assert "lacks required column(s) volume_ml" in result.stderr


def test_non_metric_model_is_refused(tmp_path, converted_dataset_dir):
    from n5k_hf.modeling import build_image_processor, load_depth_model, save_model_for_pipeline

    model = load_depth_model(model_config="tiny")
    model.config.depth_estimation_type = "relative"
    save_model_for_pipeline(model, build_image_processor(size=126), tmp_path / "relative")
    config = json.loads((tmp_path / "relative" / "config.json").read_text())
    assert config["depth_estimation_type"] == "relative"
    result = _finetune_cli(
        "--config",
        str(SMOKE),
        "--model_config=None",
        f"--model_name_or_path={tmp_path / 'relative'}",
        f"--dataset_name_or_path={converted_dataset_dir}",
    )
    assert result.returncode == 2
    assert "metric" in result.stderr and "Traceback" not in result.stderr


def test_push_to_hub_runs_after_the_card_and_never_sends_checkpoints(
    converted_dataset_dir, tmp_path, monkeypatch
):
    import n5k_hf.hub.upload as upload

    calls = []

    def fake_upload_folder(**kwargs):
        # what huggingface_hub would send: every file of the folder minus the ignore patterns passed
        folder = Path(kwargs["folder_path"])
        every_file = sorted(
            path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
        )
        sent = list(filter_repo_objects(every_file, ignore_patterns=kwargs["ignore_patterns"]))
        assert any(name.startswith("checkpoint-") for name in every_file)  # there was something to leave out
        calls.append({"kwargs": kwargs, "readme_existed": (folder / "README.md").is_file(), "files": sent})

    class FakeApi:
        def __init__(self, *args, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append({"create_repo": repo_id, **kwargs})

        def upload_folder(self, **kwargs):
            fake_upload_folder(**kwargs)

    monkeypatch.setattr(upload, "HfApi", FakeApi)
    config = _config(
        converted_dataset_dir,
        tmp_path / "out",
        "--max_train_steps=2",
        "--checkpointing_steps=1",
        "--push_to_hub=true",
        "--hub_model_id=someone/n5k-tiny",
    )
    Finetuner(config).run()
    create, push = calls
    assert create["create_repo"] == "someone/n5k-tiny"
    assert push["kwargs"]["repo_id"] == "someone/n5k-tiny"
    assert push["readme_existed"]
    sent = {str(path) for path in push["files"]}
    assert "model.safetensors" in sent and "README.md" in sent
    assert not [
        path for path in sent if path.startswith(("checkpoint-", "best_model")) or "optimizer" in path
    ]
