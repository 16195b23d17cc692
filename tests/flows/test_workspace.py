"""One Loom run per workspace, one process per stage work dir: real processes, real flock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flows import workspace

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flows import workspace
    kind, path, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    hold = workspace.locked(path, "loom run --force") if kind == "workspace" else (
        workspace.work_dir_locked(path, "loom stage word2vec@small"))
    with hold:
        print("held", flush=True)
        time.sleep(seconds)
    """
)


def hold(kind: str, path: Path, seconds: float = 60) -> subprocess.Popen:
    """Another process holding a lock, returned once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, kind, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def test_a_second_run_fails_at_once_naming_the_holder(root):
    holder = hold("workspace", root)
    try:
        started = time.monotonic()
        with pytest.raises(workspace.WorkspaceBusy) as info:
            with workspace.locked(root, "loom run"):
                pass
        assert time.monotonic() - started < 1
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "loom run --force" in message
        assert "--wait" in message
    finally:
        holder.kill()
        holder.wait()


def test_wait_queues_behind_the_holder(root, capsys):
    holder = hold("workspace", root, seconds=1.5)
    started = time.monotonic()
    with workspace.locked(root, "loom run", wait=True):
        waited = time.monotonic() - started
    holder.wait()
    assert waited >= 0.5
    assert f"waiting for the workspace lock held by pid {holder.pid}" in capsys.readouterr().err


def test_a_killed_holder_releases_the_lock_at_once(root):
    holder = hold("workspace", root)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with workspace.locked(root, "loom run") as token:
        assert os.environ[workspace.TOKEN_ENV] == token
    assert workspace.TOKEN_ENV not in os.environ


def test_re_entrant_in_process_and_inherited_by_children(root, monkeypatch):
    with workspace.locked(root, "loom run") as token:
        with workspace.locked(root, "loom run (flow)") as inner:  # the flow inside loom run
            assert inner == token
        # A child process (a stage) that loom run started finds the token and the live lock.
        code = (
            "import sys; from pathlib import Path; from flows import workspace; "
            "print(workspace.inherited(Path(sys.argv[1])))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "True"
    # The token of a run that has ended is worth nothing: the lock is free, take it anew.
    monkeypatch.setenv(workspace.TOKEN_ENV, token)
    assert not workspace.inherited(root)
    with workspace.locked(root, "loom stage x") as fresh:
        assert fresh != token


def test_a_work_dir_has_one_owner(tmp_path):
    work = tmp_path / "work" / "word2vec-small-0123"
    holder = hold("work", work)
    try:
        assert workspace.work_dir_in_use(work)
        with pytest.raises(workspace.WorkDirBusy, match=f"in use by pid {holder.pid}"):
            with workspace.work_dir_locked(work, "loom stage word2vec@small"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert not workspace.work_dir_in_use(work)
    with workspace.work_dir_locked(work, "loom stage word2vec@small"):
        assert workspace.work_dir_in_use(work)


def test_a_work_dir_removed_while_waited_on_is_taken_anew(tmp_path):
    """The last owner removes the dir on success; a process that opened the old lock file
    must not believe it owns the new dir."""
    work = tmp_path / "w"
    done = threading.Event()

    def owner() -> None:
        with workspace.work_dir_locked(work, "first"):
            done.wait(5)
            import shutil

            shutil.rmtree(work)

    thread = threading.Thread(target=owner)
    thread.start()
    time.sleep(0.2)
    with pytest.raises(workspace.WorkDirBusy):
        with workspace.work_dir_locked(work, "second"):
            pass
    done.set()
    thread.join()
    with workspace.work_dir_locked(work, "third"):
        assert (work / workspace.OWNER_FILE).exists()
