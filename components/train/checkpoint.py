"""Training checkpoints: atomic writes, newest-K retention, versioned loading.

Files are `<dir>/step-<8 digits>.pt`, written by `torch.save` to a temporary file in the
same directory, fsynced, then `os.replace`d over the final name (and the directory fsynced):
a crash at any point leaves either the old set of checkpoints or the new one, never a torn
file. Loading uses `torch.load(weights_only=True)`, so a checkpoint holds only tensors and
plain containers of primitives; `engine` decides what goes in:

    {"format": "loom-train", "version": 1, "step": int, "model": state_dict, ...}
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch

FORMAT, VERSION = "loom-train", 1
_NAME = re.compile(r"step-(\d{8})\.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message starts with its path."""


def path_for(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Finished checkpoints in `directory`, oldest first (temporary files are not listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = sorted(p.name for p in directory.iterdir() if _NAME.fullmatch(p.name))
    return [directory / name for name in names]


def latest(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (plus format and version) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer; "x" mode honours the umask (mkstemp would force 0600).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `save`; `CheckpointError` naming the file if it is not one."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT!r} checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: version {state.get('version')!r}, expected {VERSION}")
    return state


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)


def check_model(path: Path, saved: dict[str, torch.Tensor], model: dict[str, torch.Tensor]):
    """`CheckpointError` naming `path` unless both state dicts have the same names and shapes."""
    missing, unexpected = sorted(model.keys() - saved.keys()), sorted(saved.keys() - model.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: incompatible model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, value in model.items():
        if saved[name].shape != value.shape:
            raise CheckpointError(
                f"{path}: incompatible model: {name} has shape {tuple(saved[name].shape)} "
                f"in the checkpoint, {tuple(value.shape)} in the model"
            )


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
