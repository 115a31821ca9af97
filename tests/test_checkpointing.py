"""checkpoint-{step} folders: latest lookup ignores partial writes; rotation keeps newest and best."""

import pytest

from n5k_hf.training.checkpointing import (
    CheckpointError,
    list_checkpoints,
    publish_checkpoint,
    resolve_resume_checkpoint,
    rotate_checkpoints,
    temporary_checkpoint_dir,
)
from n5k_hf.training.schedule import build_lr_lambda


def _make(tmp_path, *steps):
    for step in steps:
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_text("x")


def test_latest_ignores_temporary_and_sorts_numerically(tmp_path):
    _make(tmp_path, 9, 10, 100)
    (tmp_path / "checkpoint-200.tmp").mkdir()  # a write that was killed
    assert resolve_resume_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-100"
    assert resolve_resume_checkpoint(None, tmp_path) is None
    assert resolve_resume_checkpoint("latest", tmp_path / "empty") is None
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-7"), tmp_path)


def test_publish_is_a_rename(tmp_path):
    temporary = temporary_checkpoint_dir(tmp_path, 5)
    temporary.mkdir()
    (temporary / "a").write_text("1")
    publish_checkpoint(temporary, tmp_path / "checkpoint-5")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [5]
    assert not temporary.exists()


def test_rotation_never_deletes_newest_or_best(tmp_path):
    _make(tmp_path, 10, 20, 30, 40)
    removed = rotate_checkpoints(tmp_path, 2, keep_steps={10})
    assert sorted(p.name for p in removed) == ["checkpoint-20", "checkpoint-30"]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10, 40]
    # a limit of 1 with a protected best keeps two: best and newest
    _make(tmp_path, 50)
    rotate_checkpoints(tmp_path, 1, keep_steps={10})
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10, 50]
    assert rotate_checkpoints(tmp_path, None) == []


def test_lr_lambda_values():
    poly = build_lr_lambda(
        scheduler_type="poly", total_steps=100, warmup_steps=10, stage2_start_step=50, stage2_scale=0.5
    )
    assert poly(0) == pytest.approx(0.1)
    assert poly(9) == pytest.approx(1.0)
    assert poly(20) == pytest.approx(0.8**0.9)
    assert poly(60) == pytest.approx(0.5 * 0.4**0.9)
    cosine = build_lr_lambda(scheduler_type="cosine", total_steps=100)
    assert cosine(50) == pytest.approx(0.5)
    assert build_lr_lambda(scheduler_type="linear", total_steps=100)(25) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown lr_scheduler_type"):
        build_lr_lambda(scheduler_type="step", total_steps=10)
