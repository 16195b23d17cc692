"""Atomic stage outputs: write into scratch paths beside the targets, swap in only on success.

A stage that fails or is killed leaves its previous outputs untouched; at worst it leaves a
`.loom-tmp-*` scratch entry, which the next run of that stage removes.
"""

from __future__ import annotations

import json
import os
import shutil
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


def scratch_path(target: Path) -> Path:
    """Same directory (so the final rename is atomic), hidden, unique per process."""
    return target.parent / f"{SCRATCH_PREFIX}{os.getpid()}-{target.name}"


def clean_stale(target: Path) -> None:
    """Remove scratch/retired leftovers of earlier killed runs for `target`."""
    if not target.parent.is_dir():
        return
    for prefix in (SCRATCH_PREFIX, RETIRED_PREFIX):
        for entry in target.parent.glob(f"{prefix}*-{target.name}"):
            _remove(entry)


@contextmanager
def staged_outputs(targets: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Yield name -> scratch path; on clean exit move every scratch path onto its target.

    Targets are replaced one by one with rename(2): each output is either the old or the new
    version, never a mix of files. On an exception all scratch paths are removed.
    """
    scratch = {}
    for name, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
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


def write_text(target: Path, text: str) -> None:
    """Atomically write a small text file (temp file + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(target)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def write_json(target: Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
