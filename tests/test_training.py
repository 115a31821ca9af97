"""The fine-tuning recipe end to end on the synthetic dataset, with a tiny random DAV2-metric model.

Runs go through ``recipes/finetune.py`` in subprocesses, as a user launches them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT

SMOKE = REPO_ROOT / "recipes" / "smoke" / "config.yaml"
FAKE_TOKEN = "hf_PLANTEDfakeTOKENforLEAKtest0123456789"


def finetune_command(
    dataset_dir: Path, output_dir: Path, *extra: str, launcher: list[str] | None = None
) -> list[str]:
    launcher = launcher or [sys.executable]
    return [
        *launcher,
        str(REPO_ROOT / "recipes" / "finetune.py"),
        "--config",
        str(SMOKE),
        f"--dataset_name_or_path={dataset_dir}",
        f"--output_dir={output_dir}",
        "--per_device_train_batch_size=4",
        "--per_device_eval_batch_size=3",
        "--num_validation_images=1",
        *extra,
    ]


def run(
    command: list[str], env_extra: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)
    assert result.returncode == 0, (
        f"{' '.join(command)}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    )
    return result


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def smoke_run(converted_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run with tensorboard logging and a planted fake token in the environment."""
    output_dir = tmp_path_factory.mktemp("smoke") / "model"
    run(
        finetune_command(
            converted_dataset_dir,
            output_dir,
            "--num_train_epochs=2",
            "--stage1_epochs=1",
            "--checkpointing_steps=epoch",
            "--checkpoints_total_limit=1",
            "--report_to=tensorboard",
        ),
        env_extra={"HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN},
    )
    return output_dir


def test_output_folder_is_a_pipeline_model_with_card_and_report(smoke_run: Path):
    from PIL import Image
    from transformers import pipeline

    config = json.loads((smoke_run / "config.json").read_text())
    assert config["depth_estimation_type"] == "metric"
    assert isinstance(config["max_depth"], int)
    assert (smoke_run / "model.safetensors").is_file()
    assert (smoke_run / "preprocessor_config.json").is_file()
    depth_estimator = pipeline("depth-estimation", model=str(smoke_run), device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    predicted = depth_estimator(image)["predicted_depth"]
    assert tuple(predicted.shape[-2:]) == (240, 320)
    assert float(predicted.min()) > 0 and float(predicted.max()) < config["max_depth"]

    metrics = json.loads((smoke_run / "test_evaluation" / "metrics.json").read_text())
    per_dish = (smoke_run / "test_evaluation" / "per_dish.csv").read_text().splitlines()
    assert metrics["num_dishes"] == 7 and len(per_dish) == 1 + metrics["num_evaluated"]
    for plot in ("volume_scatter.png", "ape_histogram.png"):
        assert (smoke_run / "test_evaluation" / "plots" / plot).stat().st_size > 1000
    card = (smoke_run / "README.md").read_text()
    assert "pipeline_tag: depth-estimation" in card
    assert f"{metrics['volume_mape']:.2f}"[:4] in card  # the measured number, not a made-up one

    history = json.loads((smoke_run / "training_history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1, 2]
    checkpoints = sorted(path.name for path in smoke_run.glob("checkpoint-*"))
    assert 1 <= len(checkpoints) <= 2  # total limit 1, plus the best one when it is not the newest
    assert list(smoke_run.glob("logs/**/events.out.tfevents.*")), "tensorboard logged nothing"


def test_token_from_environment_appears_in_no_output(smoke_run: Path):
    leaked = []
    for path in smoke_run.rglob("*"):
        if path.is_file() and FAKE_TOKEN.encode() in path.read_bytes():
            leaked.append(path)
    assert not leaked, f"token written to {leaked}"


def test_validation_is_identical_with_one_and_two_processes(converted_dataset_dir: Path, tmp_path: Path):
    """Same initial weights (seeded tiny model): step-0 validation and test metrics must match exactly."""
    outputs = {}
    for name, launcher in (
        ("one", [sys.executable]),
        ("two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]),
    ):
        output_dir = tmp_path / name
        run(finetune_command(converted_dataset_dir, output_dir, "--max_train_steps=0", launcher=launcher))
        outputs[name] = output_dir
    reports = {
        name: json.loads((path / "test_evaluation" / "metrics.json").read_text())
        for name, path in outputs.items()
    }
    assert reports["one"].pop("num_processes") == 1
    assert reports["two"].pop("num_processes") == 2
    assert reports["one"] == reports["two"]
    validation = {
        name: json.loads((path / "training_history.json").read_text())[0] for name, path in outputs.items()
    }
    assert validation["one"] == validation["two"]
    assert validation["one"]["num_dishes"] == 6


RESUME_ARGS = (
    "--max_train_steps=10",
    "--stage1_epochs=1",
    "--checkpointing_steps=2",
    "--checkpoints_total_limit=2",
)

# Runs recipes/finetune.py, but the process kills itself half-way through writing checkpoint-4.
DIE_WHILE_SAVING = """
import os, runpy, signal, sys
from accelerate import Accelerator
original_save_state = Accelerator.save_state
def save_state_then_die(self, output_dir=None, **kwargs):
    if str(output_dir).endswith("checkpoint-4.tmp"):
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "model.safetensors"), "wb") as handle:
            handle.write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    return original_save_state(self, output_dir, **kwargs)
Accelerator.save_state = save_state_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def uninterrupted_run(converted_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "model"
    run(finetune_command(converted_dataset_dir, output_dir, *RESUME_ARGS))
    return output_dir


def assert_same_final_weights(reference_dir: Path, resumed_dir: Path) -> None:
    for relative in ("checkpoint-10/model.safetensors", "model.safetensors"):
        reference = model_tensors(reference_dir / relative)
        resumed = model_tensors(resumed_dir / relative)
        assert reference.keys() == resumed.keys()
        for key in reference:
            assert torch.equal(reference[key], resumed[key]), f"{relative}: {key}"
    assert json.loads((reference_dir / "training_history.json").read_text()) == json.loads(
        (resumed_dir / "training_history.json").read_text()
    )


def test_killed_run_resumes_to_the_same_weights(
    converted_dataset_dir: Path, uninterrupted_run: Path, tmp_path: Path
):
    """SIGKILL right after the first checkpoint appears, resume from latest: bit-identical weights."""
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        finetune_command(converted_dataset_dir, killed_dir, *RESUME_ARGS),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if list(killed_dir.glob("checkpoint-*")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_dir / "model.safetensors").exists()

    run(finetune_command(converted_dataset_dir, killed_dir, *RESUME_ARGS, "--resume_from_checkpoint=latest"))
    assert_same_final_weights(uninterrupted_run, killed_dir)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(
    converted_dataset_dir: Path, uninterrupted_run: Path, tmp_path: Path
):
    killed_dir = tmp_path / "killed"
    command = finetune_command(converted_dataset_dir, killed_dir, *RESUME_ARGS)
    died = subprocess.run(
        [sys.executable, "-c", DIE_WHILE_SAVING, *command[1:]], cwd=REPO_ROOT, capture_output=True
    )
    assert died.returncode == -signal.SIGKILL
    assert (killed_dir / "checkpoint-4.tmp" / "model.safetensors").read_bytes() == b"half a file"
    assert [path.name for path in killed_dir.glob("checkpoint-*") if path.is_dir()] != []
    assert not (killed_dir / "checkpoint-4").exists()

    run(finetune_command(converted_dataset_dir, killed_dir, *RESUME_ARGS, "--resume_from_checkpoint=latest"))
    assert not list(killed_dir.glob("*.tmp")), "the half-written checkpoint was not cleaned up"
    assert_same_final_weights(uninterrupted_run, killed_dir)
