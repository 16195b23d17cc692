"""Atomic stage outputs: write into scratch paths beside the targets, swap in only on success.

A stage that fails or is killed leaves its previous outputs untouched; at worst it leaves a
`.loom-tmp-<pid>-*` scratch entry, which the next run of that stage removes once that pid is
no longer alive (a live process's scratch is its own business: it may be writing it now).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCRATCH_PREFIX = ".loom-tmp-"
RETIRED_PREFIX = ".loom-old-"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class OutputError(ValueError):
    """An output location that cannot be written: the message names it."""


def check_writable(directory: Path) -> None:
    """Fail now, before any work, if files cannot be created in `directory` (made if
    missing): a stage must not train for an hour and then fail to save."""
    probe = directory / f"{SCRATCH_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-probe"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise OutputError(
            f"{directory}: cannot write outputs there ({err.strerror or err}); fix its "
            "permissions or free it, the last good outputs are untouched"
        ) from None


def scratch_path(target: Path) -> Path:
    """Same directory (so the final rename is atomic), hidden, unique per process."""
    return target.parent / f"{SCRATCH_PREFIX}{os.getpid()}-{target.name}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(target: Path) -> None:
    """Remove scratch/retired leftovers for `target` of processes that are gone (killed)."""
    if not target.parent.is_dir():
        return
    for prefix in (SCRATCH_PREFIX, RETIRED_PREFIX):
        for entry in target.parent.glob(f"{prefix}*-{target.name}"):
            pid = entry.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            _remove(entry)


@contextmanager
def staged_outputs(targets: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Yield name -> scratch path; on clean exit move every scratch path onto its target.

    Targets are replaced one by one with rename(2): each output is either the old or the new
    version, never a mix of files. On an exception all scratch paths are removed.
    """
    scratch = {}
    for name, target in targets.items():
        check_writable(target.parent)
        clean_stale(target)
        scratch[name] = scratch_path(target)
    try:
        yield scratch
        missing = [
            str(targets[n]) for n, p in scratch.items() if not (p.exists() or p.is_symlink())
        ]
        if missing:
            raise FileNotFoundError(f"the stage did not write its declared outputs: {missing}")
        for name, tmp in scratch.items():
            replace(tmp, targets[name])
    finally:
        for tmp in scratch.values():
            if tmp.exists():
                _remove(tmp)


def replace(src: Path, target: Path) -> None:
    """Move `src` onto `target`, which may be an existing file or directory."""
    if target.is_dir() and not target.is_symlink():
        retired = target.parent / f"{RETIRED_PREFIX}{os.getpid()}-{target.name}"
        os.replace(target, retired)
        os.replace(src, target)
        shutil.rmtree(retired)
    else:
        os.replace(src, target)


def write_bytes(target: Path, data: bytes) -> None:
    """Atomically write a small file (temp file + rename): a reader sees the old file or the
    new one, never half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # pid, then a per-call suffix: two threads of one process never share a temp file
    tmp = target.parent / f"{SCRATCH_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{target.name}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(target: Path, text: str) -> None:
    """Atomically write a small text file (UTF-8)."""
    write_bytes(target, str.encode(text, "utf-8"))  # TypeError for a non-str, before any file


def write_json(target: Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
