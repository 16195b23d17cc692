"""One Loom run per workspace, and one process per stage work directory.

A workspace (a checkout, a worktree, DVC's temp copy of an experiment) is locked for the whole
of a `loom run`, a `loom pull`, or a `loom stage` that no `loom run` launched (e.g. under
`dvc repro`), as DVC's rwlock guards its own commands: a second one fails at once naming the
holder, or waits with a message (`--wait`). The lock is `flock(2)` on `.dvc/tmp/loom.lock`
(DVC's own tmp dir, never committed), so a holder that dies, even by SIGKILL, releases it at
once; the file also records who holds it (pid, host, command, since) for the message.

Stages that a `loom run` launches find $LOOM_WORKSPACE_LOCK set to the token their run wrote
in the lock file: the run holds the lock for them. A resumable stage work directory is locked
the same way (`work_dir_locked`), so two processes never train into one checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from flows.project import ProjectError

TOKEN_ENV = "LOOM_WORKSPACE_LOCK"
OWNER_FILE = ".owner"  # in a stage work dir: its lock, and who holds it
_HELD: dict[Path, tuple[IO[str], str]] = {}  # lock file -> (open handle, token): this process


class WorkspaceBusy(ProjectError):
    """Another Loom process holds the lock; the message names it."""


def lock_path(root: Path) -> Path:
    return Path(root) / ".dvc" / "tmp" / "loom.lock"


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not said which yet)"
    return (
        f"pid {holder['pid']} on {holder.get('host', '?')} ({holder.get('command', '?')}, "
        f"since {holder.get('since', '?')})"
    )


def _try_flock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def inherited(root: Path) -> bool:
    """Whether a `loom run` of this workspace launched this process and holds the lock."""
    token = os.environ.get(TOKEN_ENV, "")
    path = lock_path(root)
    if not token or _holder(path).get("token") != token:
        return False
    with path.open("a") as probe:  # a live holder keeps it locked; a dead one does not
        if _try_flock(probe):
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False
    return True


@contextlib.contextmanager
def locked(root: Path, command: str, wait: bool = False) -> Iterator[str]:
    """Hold the workspace lock of `root` (re-entrant in this process); yields its token, which
    child processes get in $LOOM_WORKSPACE_LOCK. Raises WorkspaceBusy unless `wait`."""
    path = lock_path(Path(root).resolve())
    if path in _HELD:
        yield _HELD[path][1]
        return
    if inherited(root):
        yield os.environ[TOKEN_ENV]
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        if not _try_flock(handle):
            holder = describe(_holder(path))
            if not wait:
                raise WorkspaceBusy(
                    f"{root}: the workspace is in use by {holder}; wait for it to finish, "
                    "or pass --wait to queue behind it"
                )
            print(f"waiting for the workspace lock held by {holder} ...", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        token = uuid.uuid4().hex
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": token,
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        _HELD[path] = (handle, token)
        previous = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = token  # what the stage processes this run starts inherit
        try:
            yield token
        finally:
            del _HELD[path]
            if previous is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = previous
            handle.seek(0)
            handle.truncate()
            handle.flush()
    finally:
        handle.close()  # releases the flock


class WorkDirBusy(ProjectError):
    """A stage work directory is in use by another live process."""


@contextlib.contextmanager
def work_dir_locked(work: Path, command: str) -> Iterator[None]:
    """Own stage work directory `work` (created if missing) while the block runs.

    The lock file lives inside the directory, which its last owner removes on success: after
    taking the lock, the file must still be the one at that path, or the directory was
    removed (and maybe made anew) meanwhile and we take the new one's lock instead.
    """
    while True:
        work.mkdir(parents=True, exist_ok=True)
        path = work / OWNER_FILE
        handle = path.open("a+")
        if not _try_flock(handle):
            holder = describe(_holder(path))
            handle.close()
            raise WorkDirBusy(f"{work}: this stage's work directory is in use by {holder}")
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
        handle.write(json.dumps(record | {"since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        handle.flush()
        yield
    finally:
        handle.close()


def work_dir_in_use(work: Path) -> bool:
    """Whether a live process owns `work` now (a pruner must leave it alone)."""
    path = work / OWNER_FILE
    if not path.exists():
        return False
    with path.open("a") as handle:
        if _try_flock(handle):
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    return True
