"""Safe loading: no pickle code execution from .pth files, no remote code, safetensors on save."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from n5k_hf.official_checkpoint import OfficialCheckpointError, load_official_checkpoint
from tests.conftest import REPO_ROOT


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_a_pth_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"pretrained.cls_token": torch.zeros(1), "payload": RunsCodeWhenUnpickled()}, path)
    with pytest.raises(OfficialCheckpointError):
        load_official_checkpoint(path)
    assert not (tmp_path / "pwned-by-pickle").exists()


def _calls(name: str):
    for path in sorted((REPO_ROOT / "n5k_hf").rglob("*.py")) + sorted((REPO_ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == name
            ):
                yield path, node


def test_every_torch_load_is_weights_only_and_remote_code_is_never_trusted():
    loads = list(_calls("load"))
    torch_loads = [
        (p, n)
        for p, n in loads
        if isinstance(n.func, ast.Attribute) and getattr(n.func.value, "id", "") == "torch"
    ]
    assert torch_loads, "expected the official checkpoint loader"
    for path, node in torch_loads:
        keywords = {k.arg: k.value for k in node.keywords}
        assert (
            isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
        ), path
    for path in sorted((REPO_ROOT / "n5k_hf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path


def test_models_are_saved_as_safetensors(tmp_path):
    from n5k_hf.modeling import build_image_processor, load_depth_model, save_model_for_pipeline

    folder = save_model_for_pipeline(
        load_depth_model(model_config="tiny"), build_image_processor(size=126), tmp_path / "m"
    )
    names = {path.name for path in Path(folder).iterdir()}
    assert "model.safetensors" in names
    assert not {name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl"))}
