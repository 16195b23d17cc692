"""git, as Loom asks it things: the one place that runs it.

Two ways to fail. `run` raises `GitError` naming the command, where it ran and git's own
message (a sweep cannot start without its commit); `output` answers "" instead (lineage
tags must never fail a stage run, and a project need not be a git repository).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flows.project import ProjectError

_WORKTREE_LOCK = threading.Lock()  # `git worktree add/remove` both edit .git/worktrees


class GitError(ProjectError):
    """A git command exited non-zero."""


def run(cwd: Path, *args: str, timeout: float | None = None) -> str:
    """The stdout of `git ARGS` in `cwd`; GitError when git fails."""
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise GitError(f"git {' '.join(args)} (in {cwd}): {res.stderr.strip()}")
    return res.stdout


def output(cwd: Path, *args: str, timeout: float | None = 20) -> str:
    """The stripped stdout of `git ARGS` in `cwd`, or "" when git fails, is not installed or
    takes longer than `timeout` seconds."""
    try:
        return run(cwd, *args, timeout=timeout).strip()
    except (GitError, OSError, subprocess.TimeoutExpired):
        return ""


@dataclass(frozen=True)
class Checkout:
    """Which code a directory holds, as lineage records it."""

    commit: str  # HEAD, or "unknown" outside a git repository
    dirty: bool  # tracked files differ from HEAD (untracked ones do not count)


def checkout(root: Path) -> Checkout:
    """The commit `root` is at and whether it has uncommitted changes; never raises."""
    commit = output(root, "rev-parse", "HEAD") or "unknown"
    dirty = bool(output(root, "status", "--porcelain", "--untracked-files=no"))
    return Checkout(commit, dirty)


def head(root: Path) -> str:
    """The commit HEAD is at; GitError outside a git repository."""
    return run(root, "rev-parse", "HEAD").strip()


def show(root: Path, commit: str, path: str) -> str:
    """The text of `path` (relative to `root`) as committed at `commit`."""
    return run(root, "show", f"{commit}:./{path}")


@contextlib.contextmanager
def worktree(root: Path, commit: str, path: Path) -> Iterator[Path]:
    """A detached `git worktree` of `commit` at `path`; yields the directory in it that
    `root` is in the checkout (a project may sit in a subdirectory of its repository).
    Removed on exit, whatever happened inside."""
    top = Path(run(root, "rev-parse", "--show-toplevel").strip()).resolve()
    with _WORKTREE_LOCK:
        run(top, "worktree", "add", "--detach", str(path), commit)
    try:
        yield path / root.resolve().relative_to(top)
    finally:
        with _WORKTREE_LOCK:
            # --force: the checkout holds modified and git-ignored files by now.
            output(top, "worktree", "remove", "--force", str(path), timeout=None)
            output(top, "worktree", "prune", timeout=None)
        shutil.rmtree(path, ignore_errors=True)
