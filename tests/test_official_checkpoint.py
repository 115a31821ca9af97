"""Official DAV2 .pth <-> HF conversion: key layout, bit-exact round trips, and the CLI's errors."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import DepthAnythingForDepthEstimation

from n5k_hf.modeling import tiny_dav2_metric_config
from n5k_hf.official_checkpoint import (
    OfficialCheckpointError,
    config_for_encoder,
    convert_official_state_dict,
    hf_to_official_state_dict,
    load_official_checkpoint,
    official_to_hf_key_map,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "convert_official_checkpoint.py"


def randomised(model: DepthAnythingForDepthEstimation, seed: int = 0) -> DepthAnythingForDepthEstimation:
    """Every parameter drawn at random, so that a misplaced tensor changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def pixel_values(height: int = 42, width: int = 56) -> torch.Tensor:
    return torch.randn((1, 3, height, width), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("encoder", "num_parameters", "num_official_keys"),
    # published sizes 24.8M / 97.5M / 335.3M; official keys counted by hand: 5 embedding tensors,
    # 14 per block, 2 final norm, 64 in the DPT head (8 projects, 6 resize, 4 *_rn, 40 refinenet, 6 output)
    [
        ("vits", 24_785_089, 5 + 12 * 14 + 2 + 64),
        ("vitb", 97_470_785, 239),
        ("vitl", 335_315_649, 5 + 24 * 14 + 2 + 64),
    ],
)
def test_official_sizes_and_key_counts(encoder, num_parameters, num_official_keys):
    config = config_for_encoder(encoder, 20)
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config)
    assert sum(p.numel() for p in model.parameters()) == num_parameters
    one_to_one, fused = official_to_hf_key_map(config)
    assert len(one_to_one) + len(fused) == num_official_keys
    assert config.max_depth == 20 and config.depth_estimation_type == "metric"


def test_key_map_spot_checks():
    one_to_one, fused = official_to_hf_key_map(config_for_encoder("vitl"))
    assert (
        one_to_one["depth_head.scratch.refinenet4.resConfUnit1.conv1.weight"]
        == "neck.fusion_stage.layers.0.residual_layer1.convolution1.weight"
    )
    assert (
        one_to_one["depth_head.scratch.refinenet1.out_conv.bias"]
        == "neck.fusion_stage.layers.3.projection.bias"
    )
    assert one_to_one["depth_head.resize_layers.3.weight"] == "neck.reassemble_stage.layers.3.resize.weight"
    assert "depth_head.resize_layers.2.weight" not in one_to_one  # factor 1: Identity, no weights
    assert one_to_one["depth_head.scratch.output_conv2.2.weight"] == "head.conv3.weight"
    assert one_to_one["pretrained.blocks.23.ls2.gamma"] == "backbone.encoder.layer.23.layer_scale2.lambda1"
    assert len(fused["pretrained.blocks.23.attn.qkv.weight"]) == 3


def test_qkv_is_split_in_thirds_in_order():
    config = tiny_dav2_metric_config()
    model = randomised(DepthAnythingForDepthEstimation(config))
    official = hf_to_official_state_dict(model.state_dict(), config)
    qkv = official["pretrained.blocks.2.attn.qkv.weight"]
    assert qkv.shape == (3 * 64, 64)
    _, fused = official_to_hf_key_map(config)
    query_name, key_name, value_name = fused["pretrained.blocks.2.attn.qkv.weight"]
    state = model.state_dict()
    assert torch.equal(qkv[:64], state[query_name])
    assert torch.equal(qkv[64:128], state[key_name])
    assert torch.equal(qkv[128:], state[value_name])


def test_tiny_round_trip_through_a_wrapped_pth_is_bit_exact(tmp_path):
    config = tiny_dav2_metric_config(max_depth=2)
    original = randomised(DepthAnythingForDepthEstimation(config))
    official = hf_to_official_state_dict(original.state_dict(), config)
    path = tmp_path / "tiny.pth"
    torch.save({"model": {f"module.{key}": value for key, value in official.items()}, "epoch": 3}, path)
    restored = DepthAnythingForDepthEstimation(config)
    restored.load_state_dict(convert_official_state_dict(load_official_checkpoint(path), config), strict=True)
    restored.eval()
    with torch.no_grad():
        expected = original(pixel_values()).predicted_depth
        actual = restored(pixel_values()).predicted_depth
    assert expected.shape == (1, 42, 56)
    assert expected.std().item() > 1e-4  # not a constant map
    assert torch.equal(actual, expected)


def test_missing_and_unexpected_keys_are_both_named():
    config = tiny_dav2_metric_config()
    official = hf_to_official_state_dict(DepthAnythingForDepthEstimation(config).state_dict(), config)
    del official["depth_head.scratch.layer3_rn.weight"]
    official["depth_head.readout_projects.0.0.weight"] = torch.zeros(1)
    with pytest.raises(OfficialCheckpointError) as error:
        convert_official_state_dict(official, config)
    assert "depth_head.scratch.layer3_rn.weight" in str(error.value)
    assert "depth_head.readout_projects.0.0.weight" in str(error.value)


def test_load_official_checkpoint_rejects_bad_files(tmp_path):
    with pytest.raises(OfficialCheckpointError, match="no such checkpoint file"):
        load_official_checkpoint(tmp_path / "absent.pth")
    text = tmp_path / "model.safetensors"
    text.write_text("not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match=r"expected an official \.pth"):
        load_official_checkpoint(text)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a zip or pickle")
    with pytest.raises(OfficialCheckpointError, match="cannot be read as a PyTorch checkpoint"):
        load_official_checkpoint(garbage)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(OfficialCheckpointError, match="does not hold a state dict"):
        load_official_checkpoint(tmp_path / "list.pth")


@pytest.fixture(scope="module")
def vits_checkpoint(tmp_path_factory):
    """A random HF ViT-S DAV2-metric model and its official-format .pth."""
    config = config_for_encoder("vits", 20)
    model = randomised(DepthAnythingForDepthEstimation(config))
    path = tmp_path_factory.mktemp("official") / "depth_anything_v2_metric_hypersim_vits.pth"
    torch.save(hf_to_official_state_dict(model.state_dict(), config), path)
    return model, path


@pytest.fixture(scope="module")
def script_main():
    return runpy.run_path(str(SCRIPT), run_name="convert_official_checkpoint")["main"]


def test_cli_converts_vits_bit_exact_and_pipeline_ready(vits_checkpoint, script_main, tmp_path, capsys):
    model, path = vits_checkpoint
    output_dir = tmp_path / "hf"
    status = script_main(
        ["--checkpoint", str(path), "--encoder", "vits", "--max-depth", "20", "--output-dir", str(output_dir)]
    )
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in output_dir.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    restored = DepthAnythingForDepthEstimation.from_pretrained(output_dir).eval()
    assert restored.config.max_depth == 20
    with torch.no_grad():
        assert torch.equal(restored(pixel_values()).predicted_depth, model(pixel_values()).predicted_depth)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--encoder", "vitb"], "shapes do not fit this encoder"),
        (["--encoder", "vitl"], "missing [pretrained.blocks.12."),
        (["--encoder", "vith"], "encoder must be one of"),
        (["--encoder", "vits", "--max-depth", "1.5"], "not a whole number of metres"),
    ],
)
def test_cli_errors_are_one_line(vits_checkpoint, script_main, tmp_path, capsys, arguments, message):
    _, path = vits_checkpoint
    status = script_main(["--checkpoint", str(path), "--output-dir", str(tmp_path / "out"), *arguments])
    error = capsys.readouterr().err
    assert status == 1
    assert error.startswith("error: ") and error.count("\n") == 1
    assert message in error
    assert not (tmp_path / "out").exists()


def test_cli_process_exits_non_zero_without_traceback(tmp_path):
    not_pth = tmp_path / "weights.bin"
    not_pth.write_bytes(b"")
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--checkpoint",
            str(not_pth),
            "--encoder",
            "vits",
            "--output-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == f"error: {not_pth}: expected an official .pth checkpoint, got a .bin file\n"
