"""DAV2-metric model loading, max_depth typing, processor, pipeline folder, parameter groups."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from PIL import Image
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, pipeline

from n5k_hf.modeling import (
    DEFAULT_MODEL_ID,
    ModelLoadError,
    build_image_processor,
    encoder_decoder_parameter_groups,
    freeze_encoder,
    load_depth_model,
    save_model_for_pipeline,
    set_max_depth,
    set_model_max_depth,
    tiny_dav2_metric_config,
)


def randomised(model: DepthAnythingForDepthEstimation, seed: int = 0) -> DepthAnythingForDepthEstimation:
    """Every parameter drawn at random (a fresh metric head outputs max_depth / 2 everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def photo(height: int = 480, width: int = 640) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_default_model_id():
    assert DEFAULT_MODEL_ID == "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"


def test_transformers_types_max_depth_as_int():
    # the quirk set_max_depth exists for: if transformers relaxes it, this test says so
    with pytest.raises(StrictDataclassError, match="max_depth"):
        DepthAnythingConfig(depth_estimation_type="metric", max_depth=20.0)


def test_set_max_depth_stores_integral_floats_as_int_and_round_trips(tmp_path):
    config = set_max_depth(tiny_dav2_metric_config(), 20.0)
    assert config.max_depth == 20 and type(config.max_depth) is int
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["max_depth"] == 20
    assert DepthAnythingConfig.from_pretrained(tmp_path).max_depth == 20


@pytest.mark.parametrize("bad", [1.5, 0, -2, float("nan"), float("inf"), True, "20"])
def test_set_max_depth_rejects_fractional_and_invalid_values(bad):
    config = tiny_dav2_metric_config()
    with pytest.raises(ValueError, match="max_depth"):
        set_max_depth(config, bad)
    assert config.max_depth == 1


def test_fractional_max_depth_error_explains_the_int_typing():
    with pytest.raises(ValueError, match=r"types DepthAnythingConfig.max_depth as int.*such as 2"):
        set_max_depth(tiny_dav2_metric_config(), 1.5)


def test_tiny_model_is_seeded_metric_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = load_depth_model("tiny-test", model_config="tiny", max_depth=2.0, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    second = load_depth_model("tiny-test", model_config="tiny", max_depth=2, seed=7)
    other = load_depth_model("tiny-test", model_config="tiny", max_depth=2, seed=8)
    first_params = dict(first.named_parameters())
    assert all(torch.equal(p, first_params[name]) for name, p in second.named_parameters())
    assert not torch.equal(
        first.backbone.encoder.layer[0].mlp.fc1.weight, other.backbone.encoder.layer[0].mlp.fc1.weight
    )
    assert first.config.depth_estimation_type == "metric" and first.config.max_depth == 2
    assert sum(p.numel() for p in first.parameters()) == 632_929
    with torch.no_grad():
        depth = first.eval()(torch.randn(1, 3, 130, 170)).predicted_depth
    # 14 * floor(H / 14) x 14 * floor(W / 14); a fresh head is sigmoid(0) * max_depth = 1.0 m everywhere
    assert depth.shape == (1, 126, 168)
    torch.testing.assert_close(depth, torch.ones_like(depth))


def test_load_from_folder_and_max_depth_rescales_the_head(tmp_path):
    model = randomised(load_depth_model(model_config="tiny"))
    save_model_for_pipeline(model, build_image_processor(), tmp_path)
    inputs = torch.randn(1, 3, 56, 70, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        original = model(inputs).predicted_depth
        loaded = load_depth_model(str(tmp_path)).eval()(inputs).predicted_depth
        rescaled = load_depth_model(str(tmp_path), max_depth=3.0).eval()(inputs).predicted_depth
    assert torch.equal(loaded, original)
    torch.testing.assert_close(rescaled, 3 * original)
    set_model_max_depth(model, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs).predicted_depth, 4 * original)
    assert model.config.max_depth == 4
    with pytest.raises(ValueError, match="whole number"):
        load_depth_model(str(tmp_path), max_depth=1.5)


def test_relative_model_is_rejected_by_name(tmp_path):
    config = tiny_dav2_metric_config()
    config.depth_estimation_type = "relative"
    DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=rf"{tmp_path}: depth_estimation_type is 'relative'"):
        load_depth_model(str(tmp_path))


def test_legacy_depth_estimation_key_is_named_in_the_error(tmp_path):
    # an early hub revision of the Large model said "depth_estimation": "metric" (ignored: relative head)
    load_depth_model(model_config="tiny").save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config_json = json.loads(config_path.read_text())
    config_json["depth_estimation"] = config_json.pop("depth_estimation_type")
    config_path.write_text(json.dumps(config_json))
    with pytest.raises(ModelLoadError, match="legacy key depth_estimation='metric'"):
        load_depth_model(str(tmp_path))


def test_non_depth_anything_and_missing_models_are_rejected(tmp_path):
    Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(
        tmp_path / "dinov2"
    )
    with pytest.raises(ModelLoadError, match="expected a Depth Anything config"):
        load_depth_model(str(tmp_path / "dinov2"))
    with pytest.raises(ModelLoadError, match="cannot load the model config"):
        load_depth_model(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="model_config must be"):
        load_depth_model(model_config="small")


def test_processor_matches_the_official_preprocessing():
    processor = build_image_processor()
    white = Image.fromarray(np.full((480, 640, 3), 255, dtype=np.uint8))
    pixel_values = processor(white, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 518, 686)  # shorter side 518, 640 * 518 / 480 = 690.7 -> 686
    # ImageNet mean/std: (1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225
    expected = torch.tensor([2.2489, 2.4286, 2.6400])
    torch.testing.assert_close(pixel_values[0, :, 100, 100], expected, rtol=0, atol=1e-4)
    assert processor.resample == 3 and processor.do_pad is False  # PIL bicubic
    with pytest.raises(ValueError, match="multiple of 14"):
        build_image_processor(500)


def test_saved_folder_runs_in_the_depth_estimation_pipeline(tmp_path):
    model = randomised(load_depth_model(model_config="tiny", max_depth=2))
    processor = build_image_processor(size=252)
    save_model_for_pipeline(model, processor, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    estimator = pipeline("depth-estimation", model=str(tmp_path / "model"))
    image = photo()
    result = estimator(image)
    depth = result["predicted_depth"]
    assert depth.shape == (480, 640)
    assert depth.min().item() > 0 and depth.max().item() < 2
    assert depth.std().item() > 1e-3
    # the same numbers by hand: official preprocessing, forward, bicubic resize to the photo size
    with torch.no_grad():
        raw = model(processor(image, return_tensors="pt").pixel_values).predicted_depth
    assert raw.shape == (1, 252, 336)
    by_hand = torch.nn.functional.interpolate(
        raw[:, None], size=(480, 640), mode="bicubic", align_corners=False
    )
    torch.testing.assert_close(depth, by_hand[0, 0], rtol=0, atol=1e-5)
    assert list(estimator.image_processor.image_mean) == [0.485, 0.456, 0.406]


def test_encoder_decoder_parameter_groups_and_freezing():
    model = load_depth_model(model_config="tiny")
    groups = encoder_decoder_parameter_groups(model)
    # encoder by hand: embeddings 64 + 64 + 1370 * 64 + (3 * 14 * 14 * 64 + 64) = 125,504;
    # per layer 128 + 3 * 4160 + 4160 + 64 + 128 + 16,640 + 16,448 + 64 = 50,112 (x4); final norm 128
    assert sum(p.numel() for p in groups["encoder"]) == 125_504 + 4 * 50_112 + 128
    assert sum(p.numel() for p in groups["decoder"]) == 632_929 - 326_080
    encoder_ids = {id(p) for p in groups["encoder"]}
    assert encoder_ids == {id(p) for name, p in model.named_parameters() if name.startswith("backbone.")}

    freeze_encoder(model, True)
    model(torch.randn(1, 3, 28, 28)).predicted_depth.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in groups["encoder"])
    assert model.head.conv3.weight.grad is not None
    freeze_encoder(model, False)
    assert all(p.requires_grad for p in groups["encoder"])
    with pytest.raises(ValueError, match="backbone"):
        encoder_decoder_parameter_groups(torch.nn.Linear(2, 2))
