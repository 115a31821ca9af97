"""Upload a saved model folder to the Hub, without checkpoints, optimizer states or logs.

Only the main process may call :func:`push_model_folder` (``if accelerator.is_main_process``): that
is the caller's job. The token is never read here: ``token=None`` lets huggingface_hub resolve it
from ``HF_TOKEN`` or the ``hf auth login`` cache; it is never printed, logged or written.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

# Training state that must never reach the Hub. Each pattern is applied at the top level and, through
# its "**/" twin, in any sub-folder (fnmatch's "*" also matches "/").
_TRAINING_STATE_PATTERNS = (
    "checkpoint-*",
    "checkpoint-*/**",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.pkl",
    "optimizer*",
    "scheduler*",
    "scaler*",
    "random_states*",
    "custom_checkpoint*",
    "training_args.bin",
    "step_*",
    "epoch_*",
    "best_model/**",  # n5k_hf.training.loop.BEST_MODEL_DIRNAME: a second copy of the released weights
    "logs/**",
    "runs/**",
    "wandb/**",
    "trackio/**",
    "mlruns/**",
    "events.out.tfevents*",
    ".git/**",
    ".cache/**",
)
MODEL_UPLOAD_IGNORE_PATTERNS = (
    *_TRAINING_STATE_PATTERNS,
    *(f"**/{pattern}" for pattern in _TRAINING_STATE_PATTERNS),
)

WEIGHT_FILENAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Hugging Face user access tokens: "hf_" followed by a long alphanumeric string.
_TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{20,}")
_TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".txt", ".cfg", ".toml")
_MAX_SCANNED_BYTES = 10_000_000


class ModelFolderError(ValueError):
    """A model folder is not ready for upload."""


def files_to_upload(model_dir: str | Path) -> list[str]:
    """Paths (relative, POSIX) of the files of ``model_dir`` that an upload sends, sorted."""
    model_dir = Path(model_dir)
    relative_paths = sorted(
        path.relative_to(model_dir).as_posix() for path in model_dir.rglob("*") if path.is_file()
    )
    return list(filter_repo_objects(relative_paths, ignore_patterns=list(MODEL_UPLOAD_IGNORE_PATTERNS)))


def check_model_folder(model_dir: str | Path) -> list[str]:
    """Check that ``model_dir`` can be uploaded; return :func:`files_to_upload`.

    Raises:
        ModelFolderError: the folder is missing, lacks ``config.json``, weights
            (one of :data:`WEIGHT_FILENAMES`) or ``README.md`` (write the model card first), or a
            text file to upload contains something that looks like a Hugging Face token.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"{model_dir}: not a directory")
    uploaded = files_to_upload(model_dir)
    problems = []
    if "config.json" not in uploaded:
        problems.append("no config.json (save the model with save_pretrained)")
    if not any(name in uploaded for name in WEIGHT_FILENAMES):
        problems.append(f"no weights (expected one of {', '.join(WEIGHT_FILENAMES)})")
    if "README.md" not in uploaded:
        problems.append("no README.md (write the model card first: n5k_hf.hub.model_card.write_model_card)")
    if problems:
        raise ModelFolderError(f"{model_dir}: " + "; ".join(problems))
    for relative_path in uploaded:
        path = model_dir / relative_path
        scanned = path.suffix in _TEXT_SUFFIXES and path.stat().st_size <= _MAX_SCANNED_BYTES
        if scanned and _TOKEN_PATTERN.search(path.read_bytes()):
            raise ModelFolderError(
                f"{path}: contains something that looks like a Hugging Face token; refusing to upload"
            )
    return uploaded


def push_model_folder(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload fine-tuned Depth Anything V2 food volume model",
    token: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload ``model_dir`` without training state.

    Args:
        model_dir: a ``save_pretrained`` folder with ``config.json``, weights and ``README.md``.
        repo_id: the model repo, ``owner/name``.
        private: create the repo private (an existing repo keeps its visibility).
        commit_message: the commit message.
        token: leave None so that huggingface_hub resolves the login itself.

    Returns:
        The URL of the upload commit.
    """
    check_model_folder(model_dir)
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token)
    commit = api.upload_folder(
        folder_path=str(model_dir),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        # A copy: upload_folder appends its own defaults to the list it is given.
        ignore_patterns=list(MODEL_UPLOAD_IGNORE_PATTERNS),
        token=token,
    )
    return str(getattr(commit, "commit_url", commit))
