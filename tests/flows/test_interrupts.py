"""`loom run` interrupted: Ctrl-C, SIGTERM and SIGKILL, against real processes (its own
temporary Prefect server, real stage processes, the session's MLflow store)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from flows import workspace
from tests.conftest import loom
from tests.flows.test_stage_runner import edit_params, snapshot
from tests.flows.test_workspace import hold

pytestmark = pytest.mark.slow


def start_run(root: Path, *args: str) -> subprocess.Popen:
    """`loom run` as a terminal starts it: its own process group, no Prefect API configured
    (so it starts its own temporary server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "loom"), "run", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def runs(experiment: str) -> list:
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def wait_for_running_stage(proc: subprocess.Popen, experiment: str, stage: str) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(
            r.data.tags.get("loom.stage") == stage and r.info.status == "RUNNING"
            for r in runs(experiment)
        ):
            time.sleep(1.0)  # into its work
            return
        time.sleep(0.2)
    raise AssertionError(f"{stage} never ran: {proc.poll()} {proc.stdout.read()}")


def family(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(p.cmdline()[:5]))
        except psutil.NoSuchProcess:
            pass
    return out


def statuses(experiment: str) -> dict[str, str]:
    found = {}
    for r in runs(experiment):
        name = r.data.tags.get("loom.stage") or (
            "pipeline" if r.data.tags.get("loom.pipeline") else "?"
        )
        found[name] = r.info.status
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_stops_stages_records_it_and_stops_the_server_last(
    project, experiment, signum
):
    edit_params(project, lambda p: p["word2vec"].update(epochs=60, batch_size=16))
    before = snapshot(project)
    proc = start_run(project, "word2vec@small")
    wait_for_running_stage(proc, experiment, "word2vec@small")
    children = family(proc.pid)
    shown = " | ".join(alive(children))
    assert "uvicorn" in shown and "loom stage word2vec@small" in shown, shown

    started = time.monotonic()
    # Ctrl-C: the terminal signals the foreground process group (loom run's, not its
    # children's: those run in sessions of their own). SIGTERM: `kill PID`.
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    out, _ = proc.communicate(timeout=90)
    took = time.monotonic() - started
    assert proc.returncode == 128 + signum, out
    assert took < 30, took
    name = signal.Signals(signum).name
    assert out.strip().splitlines()[-1].startswith(f"loom run: interrupted by {name}"), out
    assert "Connection refused" not in out and "Traceback" not in out, out
    assert alive(children) == []  # the server and the stage are gone
    found = statuses(experiment)
    assert found["word2vec@small"] == "KILLED" and found["pipeline"] == "KILLED", found
    assert snapshot(project) == before  # last good outputs
    with workspace.locked(project, "test"):  # and the workspace is free
        pass


def test_sigkill_of_loom_run_takes_its_server_and_stages_along(project, experiment):
    edit_params(project, lambda p: p["word2vec"].update(epochs=60, batch_size=16))
    before = snapshot(project)
    proc = start_run(project, "word2vec@small")
    wait_for_running_stage(proc, experiment, "word2vec@small")
    children = family(proc.pid)
    proc.kill()  # loom run alone: nothing of it can clean up
    proc.communicate()
    deadline = time.time() + 30
    while alive(children) and time.time() < deadline:
        time.sleep(0.2)
    assert alive(children) == [], "a child outlived loom run"
    assert snapshot(project) == before
    # The pipeline run stays RUNNING until the next `loom runs` / `loom run` finds its
    # process gone (the stage, which got SIGTERM as its parent died, may have ended its own).
    res = loom(project, "runs")
    assert res.returncode == 0, res.stderr
    found = statuses(experiment)
    assert found["pipeline"] == "KILLED" and found["word2vec@small"] == "KILLED", found


def test_a_second_run_in_the_workspace_fails_at_once_naming_the_first(project, experiment):
    before = snapshot(project)
    holder = hold("workspace", project)
    try:
        for args in (["run", "--force", "corpus"], ["stage", "corpus"]):
            res = loom(project, *args)
            assert res.returncode == 1
            last = res.stderr.strip().splitlines()[-1]
            assert f"the workspace is in use by pid {holder.pid}" in last, res.stderr
        assert snapshot(project) == before
    finally:
        holder.kill()
        holder.wait()
    assert runs(experiment) == []  # neither got as far as a tracking run
