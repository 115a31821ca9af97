"""``checkpoint-{step}`` folders: atomic writes, ``latest`` lookup and a total limit.

A checkpoint is written into ``checkpoint-{step}.tmp`` and renamed once complete, so a process
killed mid-write leaves the previous checkpoints untouched and no half-written folder that
``latest`` could pick. Rotation never deletes the newest checkpoint nor the one holding the best
validation score.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(FileNotFoundError):
    """``resume_from_checkpoint`` names nothing loadable."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as ``(step, path)``, oldest first (``.tmp`` folders are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """``None`` -> None; ``"latest"`` -> the newest complete checkpoint or None; else that folder."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"resume_from_checkpoint: {path} is not a checkpoint folder")
    return path


def step_of_checkpoint(path: str | Path) -> int:
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if not match:
        raise CheckpointError(f"{path}: not named checkpoint-<step>")
    return int(match.group(1))


def temporary_checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where a checkpoint is written before :func:`publish_checkpoint` renames it into place."""
    return checkpoint_dir(output_dir, step).with_name(f"checkpoint-{step}{TEMPORARY_SUFFIX}")


def publish_checkpoint(temporary: Path, final: Path) -> None:
    """Atomically renames a finished checkpoint into place (replacing an older one of that step)."""
    if final.exists():
        shutil.rmtree(final)
    temporary.rename(final)


def rotate_checkpoints(
    output_dir: str | Path, total_limit: int | None, *, keep_steps: set[int] = frozenset()
) -> list[Path]:
    """Deletes the oldest checkpoints beyond ``total_limit``; never the newest nor ``keep_steps``.

    Returns the deleted folders. ``keep_steps`` holds e.g. the step of the best checkpoint; protected
    checkpoints count towards the limit, so the limit is exceeded only when it is smaller than the
    number of protected ones plus the newest.
    """
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return []
    newest_step = checkpoints[-1][0]
    protected = set(keep_steps) | {newest_step}
    deletable = [(step, path) for step, path in checkpoints if step not in protected]
    excess = len(checkpoints) - max(total_limit, 1)
    removed = []
    for _, path in deletable[: max(excess, 0)]:
        shutil.rmtree(path)
        removed.append(path)
    for stale in Path(output_dir).glob(f"checkpoint-*{TEMPORARY_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)
    return removed
