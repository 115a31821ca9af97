"""Model card, dataset card and uploads, tested at the huggingface_hub boundary (no hub here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import datasets
import huggingface_hub
import numpy as np
import pytest
import yaml
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard
from huggingface_hub.utils import filter_repo_objects

import n5k_hf.hub.dataset_card as dataset_card_module
import n5k_hf.hub.upload as upload_module
from n5k_hf.data.features import DATASET_FEATURES
from n5k_hf.geometry.intrinsics import nutrition5k_intrinsics
from n5k_hf.hub.dataset_card import build_dataset_card, push_dataset_to_hub
from n5k_hf.hub.model_card import (
    ModelCardError,
    build_model_card,
    license_for_base_model,
    scrub_secrets,
    write_model_card,
)
from n5k_hf.hub.upload import (
    MODEL_UPLOAD_IGNORE_PATTERNS,
    ModelFolderError,
    check_model_folder,
    files_to_upload,
    push_model_folder,
)

SMALL = "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"
FAKE_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"

# Shaped like n5k_hf.evaluation's metrics: counts, volume metrics, depth metrics per region.
TEST_METRICS = {
    "num_dishes": 12,
    "num_evaluated": 11,
    "num_skipped": 1,
    "volume_mae_ml": 41.25,
    "volume_mape": 23.5,
    "within_10pct": 36.4,
    "count": 11,
    "depth": {
        "food": {"abs_rel": 0.0512, "d1": 0.973, "mae_mm": 6.25, "num_images": 11},
        "image": {"abs_rel": 0.0187, "d1": 0.991, "mae_mm": 3.5, "num_images": 12},
    },
}


def _volume_method() -> dict[str, Any]:
    return {
        "K": nutrition5k_intrinsics().tolist(),
        "plane": "RANSAC, then least squares on the inliers, on a ring 10 to 40 px around the food mask.",
        "integrator": "heightmap",
    }


def _card_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs = {
        "base_model": SMALL,
        "datasets": ["someone/nutrition5k-volume"],
        "test_metrics": TEST_METRICS,
        "training_config": {"lr": 5e-6, "max_depth": 1, "output_dir": "outputs/run"},
        "volume_method": _volume_method(),
        "hub_model_id": "someone/n5k-dav2-small",
    }
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize(
    ("base_model", "expected"),
    [
        (SMALL, "apache-2.0"),
        ("depth-anything/Depth-Anything-V2-Metric-Indoor-Base-hf", "cc-by-nc-4.0"),
        ("depth-anything/Depth-Anything-V2-Metric-Outdoor-Large-hf", "cc-by-nc-4.0"),
        ("depth-anything/Depth-Anything-V2-Small-hf", "apache-2.0"),
        ({"backbone_config": {"hidden_size": 1024}}, "cc-by-nc-4.0"),
        ({"backbone_config": {"hidden_size": 384}}, "apache-2.0"),
        ({"backbone_config": {"hidden_size": 64}}, "apache-2.0"),  # tiny: no DAV2 weights fit it
    ],
)
def test_license_follows_the_base_model(base_model: Any, expected: str) -> None:
    assert license_for_base_model(base_model) == expected


def test_license_from_a_local_folder_and_a_transformers_config(tmp_path: Path) -> None:
    from transformers import DepthAnythingConfig

    (tmp_path / "config.json").write_text(json.dumps({"backbone_config": {"hidden_size": 768}}))
    assert license_for_base_model(str(tmp_path)) == "cc-by-nc-4.0"
    tiny = DepthAnythingConfig(
        backbone_config={
            "model_type": "dinov2",
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        }
    )
    assert license_for_base_model(tiny) == "apache-2.0"


def test_unknown_base_model_licence_must_be_given(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match="pass license= explicitly"):
        license_for_base_model("facebook/dinov2-small")
    with pytest.raises(ModelCardError, match="pass license= explicitly"):
        license_for_base_model(str(tmp_path))  # a folder without config.json
    with pytest.raises(ModelCardError, match="hidden_size"):
        license_for_base_model({"model_type": "depth_anything"})
    card = build_model_card(**_card_kwargs(base_model="facebook/dinov2-small", license="mit"))
    assert card.data.license == "mit"


def test_scrub_secrets() -> None:
    config = {
        "hub": {"hub_token": FAKE_TOKEN, "hub_model_id": "someone/model", "push_to_hub": True},
        "wandb_api_key": "abc",
        "HF_TOKEN": "x",
        "lr": 1e-5,
        "paths": ["outputs", FAKE_TOKEN, f"https://user:{FAKE_TOKEN}@example.org"],
        "note": "hf_short",
    }
    assert scrub_secrets(config) == {
        "hub": {"hub_model_id": "someone/model", "push_to_hub": True},
        "lr": 1e-5,
        "paths": ["outputs", "<redacted>", "<redacted>"],
        "note": "<redacted>",
    }


def test_model_card_round_trip_with_metrics(tmp_path: Path) -> None:
    scatter = tmp_path / "plots" / "scatter.png"
    scatter.parent.mkdir()
    scatter.write_bytes(b"\x89PNG\r\n\x1a\nnot-a-real-image")
    training_config = {
        "lr": 5e-6,
        "hub": {"hub_token": FAKE_TOKEN},
        "note": FAKE_TOKEN,
        "out": Path("outputs/run"),
    }
    readme = write_model_card(
        tmp_path / "model",
        **_card_kwargs(training_config=training_config, scatter_plot_path=scatter),
    )
    assert readme == tmp_path / "model" / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert FAKE_TOKEN not in text
    assert "hf_" not in text.split("## Training configuration")[1].split("## Limitations")[0]
    assert (tmp_path / "model" / "volume_scatter.png").read_bytes() == scatter.read_bytes()
    assert "](volume_scatter.png)" in text

    card = ModelCard.load(readme)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "depth-estimation"
    assert data["base_model"] == SMALL
    assert data["datasets"] == ["someone/nutrition5k-volume"]
    (model_index,) = data["model-index"]
    assert model_index["name"] == "n5k-dav2-small"
    (result,) = model_index["results"]
    assert result["task"]["type"] == "depth-estimation"
    assert result["dataset"] == {"name": "Nutrition5k", "type": "someone/nutrition5k-volume", "split": "test"}
    values = {metric["type"]: metric["value"] for metric in result["metrics"]}
    # Exactly the metrics passed in (counts stay out of the model-index).
    assert values == {
        "mae": 41.25,
        "mape": 23.5,
        "within_10pct": 36.4,
        "abs_rel_food": 0.0512,
        "d1_food": 0.973,
        "mae_mm_food": 6.25,
        "abs_rel_image": 0.0187,
        "d1_image": 0.991,
        "mae_mm_image": 3.5,
    }
    names = {metric["type"]: metric["name"] for metric in result["metrics"]}
    assert names["mae"] == "Volume MAE (mL)"
    assert names["abs_rel_food"] == "Depth AbsRel (food)"
    # The body's table shows the same numbers and the counts.
    assert "| Volume MAE (mL) | 41.25 |" in text
    assert "| Depth δ1 (food) | 0.973 |" in text
    assert "| Dishes in the split | 12 |" in text
    # Usage, volume method, training config, limitations, citations.
    assert 'pipeline("depth-estimation", model="someone/n5k-dav2-small")' in text
    assert "integrate_volume_ml" in text
    assert "[465.14, 0.00, 320.00]" in text
    assert "Integrator: `heightmap`" in text
    assert yaml.safe_load(text.split("```yaml\n")[1].split("```")[0]) == {
        "lr": 5e-6,
        "hub": {},
        "note": "<redacted>",
        "out": "outputs/run",
    }
    assert "no ground-truth volume" in text
    assert "thames2021nutrition5k" in text
    assert "depth_anything_v2" in text


def test_model_card_without_evaluation(tmp_path: Path) -> None:
    readme = write_model_card(tmp_path, **_card_kwargs(test_metrics=None))
    card = ModelCard.load(readme)
    assert "model-index" not in card.data.to_dict()
    assert "No evaluation was run" in card.text
    assert "| metric | value |" not in card.text


def test_model_card_for_local_tiny_synthetic_model(tmp_path: Path) -> None:
    base = tmp_path / "tiny_base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"backbone_config": {"hidden_size": 64}}))
    card = build_model_card(
        **_card_kwargs(
            base_model=str(base),
            datasets=[str(tmp_path / "dataset")],
            hub_model_id=None,
            synthetic_data=True,
            test_metrics={"volume_mape": 35.0},
        )
    )
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert "base_model" not in data  # a local path is not a Hub id
    assert "datasets" not in data
    result = data["model-index"][0]["results"][0]
    assert result["dataset"]["name"] == "Nutrition5k (synthetic dishes)"
    assert [metric["value"] for metric in result["metrics"]] == [35.0]
    assert "synthetic ray-cast dishes" in card.text
    assert 'model="path/to/this/model"' in card.text


def test_model_card_rejects_incomplete_volume_method() -> None:
    with pytest.raises(ModelCardError, match=r"lacks the keys \['plane'\]"):
        build_model_card(**_card_kwargs(volume_method={"K": np.eye(3), "integrator": "heightmap"}))


# ---- dataset card ------------------------------------------------------------------------------

SPLIT_SIZES = {"train": 2480, "validation": 278, "test": 507}
REPORT_COUNTS = {"dishes_seen": 3265, "converted": 3265, "skipped_empty_depth": 0}


def test_dataset_card_content() -> None:
    card = build_dataset_card(
        repo_id="someone/nutrition5k-volume",
        split_sizes=SPLIT_SIZES,
        report_counts=REPORT_COUNTS,
        integrator="heightmap",
        K=nutrition5k_intrinsics(),
    )
    parsed = DatasetCard(str(card))
    data = parsed.data.to_dict()
    assert data["license"] == "cc-by-4.0"
    assert data["task_categories"] == ["depth-estimation"]
    assert data["size_categories"] == "1K<n<10K"
    for column in DATASET_FEATURES:
        assert f"| `{column}` |" in parsed.text
    assert "1 unit = 1e-4 m" in parsed.text
    assert "| `K` | float32[3x3] |" in parsed.text
    assert "| validation | 278 |" in parsed.text
    assert "Total: 3265 dishes" in parsed.text
    assert "| skipped_empty_depth | 0 |" in parsed.text
    assert "`heightmap` integrator" in parsed.text
    assert "[465.14, 0.00, 320.00]" in parsed.text
    assert "CC BY 4.0" in parsed.text
    assert "thames2021nutrition5k" in parsed.text
    assert "Synthetic data" not in parsed.text


def test_dataset_card_rejects_undescribed_columns() -> None:
    features = datasets.Features({**DATASET_FEATURES, "new_column": datasets.Value("int32")})
    with pytest.raises(ValueError, match=r"lacks the columns \['new_column'\]"):
        build_dataset_card(
            repo_id="a/b",
            split_sizes={"test": 1},
            report_counts={},
            integrator="heightmap",
            K=np.eye(3),
            features=features,
        )


class FakeDatasetHub:
    """A dataset repo in memory: push_to_hub writes the README datasets would generate."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.files: dict[str, str] = {}
        self.push_calls: list[dict[str, Any]] = []
        self.uploads: list[dict[str, Any]] = []
        self.generated_metadata: dict[str, Any] = {}

    def push_to_hub(self, dataset_dict: datasets.DatasetDict, repo_id: str, **kwargs: Any) -> None:
        self.push_calls.append({"repo_id": repo_id, **kwargs})
        card_data = DatasetCardData()
        splits = SplitDict()
        for name, split in dataset_dict.items():
            splits.add(SplitInfo(name=name, num_bytes=100 * len(split), num_examples=len(split)))
        info = DatasetInfo(
            features=next(iter(dataset_dict.values())).features, splits=splits, dataset_size=1234
        )
        DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
        data_files = [{"split": name, "path": f"data/{name}-*"} for name in dataset_dict]
        MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
        self.generated_metadata = {key: card_data.to_dict()[key] for key in ("configs", "dataset_info")}
        self.files[f"{repo_id}/README.md"] = f"---\n{card_data.to_yaml()}\n---\n"

    def hf_hub_download(self, repo_id: str, filename: str, *, repo_type: str, token: Any = None) -> str:
        assert repo_type == "dataset"
        assert token is None
        path = self.tmp_path / "download" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.files[f"{repo_id}/{filename}"], encoding="utf-8")
        return str(path)

    def upload_file(self, *, path_or_fileobj: str, path_in_repo: str, repo_id: str, **kwargs: Any) -> str:
        self.uploads.append({"path_in_repo": path_in_repo, "repo_id": repo_id, **kwargs})
        self.files[f"{repo_id}/{path_in_repo}"] = Path(path_or_fileobj).read_text(encoding="utf-8")
        return f"https://huggingface.co/datasets/{repo_id}/commit/1"


@pytest.fixture
def fake_dataset_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDatasetHub:
    hub = FakeDatasetHub(tmp_path)
    monkeypatch.setattr(
        datasets.DatasetDict,
        "push_to_hub",
        lambda dataset_dict, repo_id, **kwargs: hub.push_to_hub(dataset_dict, repo_id, **kwargs),
    )
    monkeypatch.setattr(dataset_card_module, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr(huggingface_hub.repocard, "upload_file", hub.upload_file)
    # validate() posts the card to the Hub's YAML validator: no network here.
    monkeypatch.setattr(huggingface_hub.repocard.RepoCard, "validate", lambda self, repo_type=None: None)
    return hub


def _tiny_dataset_dict() -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"dish_id": [f"dish_{i}" for i in range(size)], "volume_ml": [1.0] * size}
            )
            for split, size in (("train", 3), ("test", 2))
        }
    )


def test_push_dataset_keeps_generated_metadata(fake_dataset_hub: FakeDatasetHub) -> None:
    repo_id = "someone/nutrition5k-volume"
    card = build_dataset_card(
        repo_id=repo_id,
        split_sizes={"train": 3, "test": 2},
        report_counts={"converted": 5},
        integrator="heightmap",
        K=nutrition5k_intrinsics(),
    )
    pushed = push_dataset_to_hub(_tiny_dataset_dict(), repo_id, private=True, card=card)

    assert fake_dataset_hub.push_calls == [{"repo_id": repo_id, "private": True, "token": None}]
    (upload,) = fake_dataset_hub.uploads
    assert upload["repo_id"] == repo_id
    assert upload["path_in_repo"] == "README.md"
    assert upload["repo_type"] == "dataset"
    final = DatasetCard(fake_dataset_hub.files[f"{repo_id}/README.md"])
    metadata = final.data.to_dict()
    assert metadata["configs"] == fake_dataset_hub.generated_metadata["configs"]
    assert metadata["dataset_info"] == fake_dataset_hub.generated_metadata["dataset_info"]
    assert metadata["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*"}
    assert metadata["dataset_info"]["splits"][1]["num_examples"] == 2
    assert metadata["license"] == "cc-by-4.0"
    assert metadata["task_categories"] == ["depth-estimation"]
    assert final.text == card.text
    assert str(pushed) == fake_dataset_hub.files[f"{repo_id}/README.md"]


def test_push_dataset_refuses_a_readme_without_generated_metadata(
    fake_dataset_hub: FakeDatasetHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    def push_without_metadata(dataset_dict: datasets.DatasetDict, repo_id: str, **kwargs: Any) -> None:
        fake_dataset_hub.files[f"{repo_id}/README.md"] = "---\nlicense: mit\n---\n"

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", push_without_metadata)
    card = build_dataset_card(
        repo_id="a/b", split_sizes={"test": 2}, report_counts={}, integrator="heightmap", K=np.eye(3)
    )
    with pytest.raises(ValueError, match=r"lacks the generated metadata \['configs', 'dataset_info'\]"):
        push_dataset_to_hub(_tiny_dataset_dict(), "a/b", private=False, card=card)
    assert fake_dataset_hub.uploads == []


# ---- model upload ------------------------------------------------------------------------------


def _model_folder(root: Path) -> Path:
    files = {
        "config.json": "{}",
        "model.safetensors": "weights",
        "preprocessor_config.json": "{}",
        "README.md": "---\nlicense: apache-2.0\n---\n# card\n",
        "volume_scatter.png": "png",
        "training_history.json": "[]",
        "test_evaluation/metrics.json": "{}",
        "checkpoint-10/model.safetensors": "old weights",
        "checkpoint-10/optimizer.bin": "adam state",
        "checkpoint-20.tmp/random_states_0.pkl": "rng",
        "optimizer.bin": "adam state",
        "scheduler.bin": "lr state",
        "random_states_0.pkl": "rng",
        "scaler.pt": "amp",
        "best_model/model.safetensors": "a copy",
        "logs/events.out.tfevents.1.host": "tb",
        "runs/run1/events.out.tfevents.2.host": "tb",
        "wandb/run-1/files/config.yaml": "wandb",
        "nested/checkpoint-5/optimizer.bin": "adam state",
    }
    for relative_path, content in files.items():
        path = root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


EXPECTED_UPLOAD = [
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "test_evaluation/metrics.json",
    "training_history.json",
    "volume_scatter.png",
]


def test_ignore_patterns_keep_training_state_out(tmp_path: Path) -> None:
    model_dir = _model_folder(tmp_path / "model")
    assert files_to_upload(model_dir) == EXPECTED_UPLOAD
    # The same patterns through huggingface_hub's own filter, as upload_folder applies them.
    everything = sorted(
        path.relative_to(model_dir).as_posix() for path in model_dir.rglob("*") if path.is_file()
    )
    kept = list(filter_repo_objects(everything, ignore_patterns=list(MODEL_UPLOAD_IGNORE_PATTERNS)))
    assert "checkpoint-10/optimizer.bin" in everything
    assert "checkpoint-10/optimizer.bin" not in kept
    assert "optimizer.bin" not in kept
    assert sorted(kept) == EXPECTED_UPLOAD


def test_best_model_folder_name_matches_the_training_loop() -> None:
    from n5k_hf.training.loop import BEST_MODEL_DIRNAME

    assert f"{BEST_MODEL_DIRNAME}/**" in MODEL_UPLOAD_IGNORE_PATTERNS


class FakeHfApi:
    calls: ClassVar[list[tuple[str, tuple, dict]]] = []

    def create_repo(self, *args: Any, **kwargs: Any) -> str:
        FakeHfApi.calls.append(("create_repo", args, kwargs))
        return f"https://huggingface.co/{args[0]}"

    def upload_folder(self, **kwargs: Any) -> Any:
        FakeHfApi.calls.append(("upload_folder", (), kwargs))
        uploaded = list(
            filter_repo_objects(
                files_to_upload(kwargs["folder_path"]), ignore_patterns=kwargs["ignore_patterns"]
            )
        )

        class Commit:
            commit_url = f"https://huggingface.co/{kwargs['repo_id']}/commit/abc ({len(uploaded)} files)"

        return Commit()


@pytest.fixture
def fake_hf_api(monkeypatch: pytest.MonkeyPatch) -> type[FakeHfApi]:
    FakeHfApi.calls = []
    monkeypatch.setattr(upload_module, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_model_folder_calls(tmp_path: Path, fake_hf_api: type[FakeHfApi]) -> None:
    model_dir = _model_folder(tmp_path / "model")
    url = push_model_folder(model_dir, "someone/n5k-dav2-small", private=True)
    assert url == "https://huggingface.co/someone/n5k-dav2-small/commit/abc (7 files)"
    (create_name, create_args, create_kwargs), (upload_name, _, upload_kwargs) = fake_hf_api.calls
    assert create_name == "create_repo"
    assert create_args == ("someone/n5k-dav2-small",)
    assert create_kwargs == {"repo_type": "model", "private": True, "exist_ok": True, "token": None}
    assert upload_name == "upload_folder"
    assert upload_kwargs["repo_id"] == "someone/n5k-dav2-small"
    assert upload_kwargs["folder_path"] == str(model_dir)
    assert upload_kwargs["token"] is None
    assert upload_kwargs["ignore_patterns"] == list(MODEL_UPLOAD_IGNORE_PATTERNS)
    assert upload_kwargs["ignore_patterns"] is not MODEL_UPLOAD_IGNORE_PATTERNS


@pytest.mark.parametrize(
    ("missing", "message"),
    [("README.md", "no README.md"), ("config.json", "no config.json"), ("model.safetensors", "no weights")],
)
def test_push_model_folder_requires_card_config_and_weights(
    tmp_path: Path, fake_hf_api: type[FakeHfApi], missing: str, message: str
) -> None:
    model_dir = _model_folder(tmp_path / "model")
    (model_dir / missing).unlink()
    with pytest.raises(ModelFolderError, match=message):
        push_model_folder(model_dir, "someone/model")
    assert fake_hf_api.calls == []


def test_push_model_folder_refuses_a_token_in_the_folder(
    tmp_path: Path, fake_hf_api: type[FakeHfApi]
) -> None:
    model_dir = _model_folder(tmp_path / "model")
    (model_dir / "training_config.yaml").write_text(f"hub_token: {FAKE_TOKEN}\n")
    with pytest.raises(ModelFolderError, match="looks like a Hugging Face token"):
        push_model_folder(model_dir, "someone/model")
    assert fake_hf_api.calls == []
    # The same token inside an ignored checkpoint folder is never uploaded, hence no objection.
    (model_dir / "training_config.yaml").unlink()
    (model_dir / "checkpoint-10" / "config.yaml").write_text(f"hub_token: {FAKE_TOKEN}\n")
    assert check_model_folder(model_dir) == EXPECTED_UPLOAD


def test_push_to_hub_script(
    tmp_path: Path, fake_hf_api: type[FakeHfApi], capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "push_to_hub.py"
    spec = importlib.util.spec_from_file_location("push_to_hub_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_dir = _model_folder(tmp_path / "model")

    assert module.main([str(model_dir), "someone/model", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == EXPECTED_UPLOAD
    assert fake_hf_api.calls == []

    assert module.main([str(model_dir), "someone/model", "--private"]) == 0
    assert fake_hf_api.calls[0][2]["private"] is True
    assert "uploaded 7 files to someone/model" in capsys.readouterr().out

    (model_dir / "config.json").unlink()
    assert module.main([str(model_dir), "someone/model"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_model_card_with_only_nan_metrics_reports_none() -> None:
    card = build_model_card(
        **_card_kwargs(test_metrics={"volume_mape": float("nan"), "depth": {"food": {"d1": None}}})
    )
    assert "model-index" not in card.data.to_dict()
    assert "produced no finite metric" in card.text
