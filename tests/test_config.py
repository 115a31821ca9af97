"""Recipe configuration: YAML defaults, CLI overrides, unknown and mistyped keys rejected by name."""

from pathlib import Path

import pytest

from n5k_hf.training.config import ConfigError, parse_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_recipes_parse_and_cli_overrides_yaml():
    config = parse_config(
        ["--config", str(RECIPES / "smoke" / "config.yaml"), "--learning_rate=1e-5", "--seed", "7"]
    )
    assert config.model.model_config == "tiny"
    assert config.optim.learning_rate == pytest.approx(1e-5)  # CLI beats the YAML's 5e-4
    assert config.optim.seed == 7
    assert config.data.image_size == 126  # from the YAML
    assert config.loss.w_grad == pytest.approx(0.1)
    large = parse_config(["--config", str(RECIPES / "dav2-metric-indoor-large" / "n5k" / "config.yaml")])
    assert large.model.model_name_or_path == "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"
    assert large.model.max_depth == 2
    assert large.optim.learning_rate == pytest.approx(1e-4)
    assert large.stages.stage2_lr_scale == pytest.approx(0.5)
    assert large.hub.hub_model_id is None


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML reads "5e-4" as a string; the parser converts it like a CLI value.
    path = tmp_path / "c.yaml"
    path.write_text("dataset_name_or_path: data\nlearning_rate: 5e-4\n")
    assert parse_config(["--config", str(path)]).optim.learning_rate == pytest.approx(5e-4)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset_name_or_path: data\nlearning_rat: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key\(s\) learning_rat"):
        parse_config(["--config", str(path)])


def test_unknown_cli_flag_is_named():
    with pytest.raises(ConfigError, match="unknown flag --batch_size"):
        parse_config(["--dataset_name_or_path=x", "--batch_size=3"])


def test_mistyped_value_is_an_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("dataset_name_or_path: data\nper_device_train_batch_size: many\n")
    with pytest.raises(ConfigError):
        parse_config(["--config", str(path)])
    assert "per_device_train_batch_size" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--image_size=100", "image_size must be a positive multiple of 14"),
        ("--lr_scheduler_type=step", "lr_scheduler_type"),
        ("--model_config=huge", "model_config"),
        ("--push_to_hub=true", "push_to_hub needs hub_model_id"),
        ("--checkpointing_steps=often", "checkpointing_steps"),
    ],
)
def test_cross_key_validation(flag, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(["--dataset_name_or_path=x", flag])


def test_missing_dataset_and_missing_file():
    with pytest.raises(ConfigError, match="dataset_name_or_path is required"):
        parse_config([])
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        parse_config(["--config", "nope.yaml"])


def test_none_on_the_command_line_unsets_an_optional_key():
    config = parse_config(
        ["--config", str(RECIPES / "smoke" / "config.yaml"), "--checkpointing_steps=None", "--max_depth=none"]
    )
    assert config.logging.checkpointing_steps is None
    assert config.model.max_depth is None
