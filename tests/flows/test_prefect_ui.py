"""What Prefect and MLflow show of a `loom run`, read back through their APIs (no mocks): the
task graph, task-run tags, stage logs without progress-bar floods, the progress and summary
artifacts, the pipeline run's params and metrics, and a quiet temporary Prefect server.

One forced run of the tiny project (plus a stage that draws a long progress bar) is shared by
most tests of this module: it is the expensive part."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml

from flows import cli, pipeline, plan
from tests.conftest import ALL_STAGES, flow_run_logs, make_project
from tests.flows.test_pipeline import add_stage

pytestmark = pytest.mark.slow

# A stage with a long tqdm bar (REFRESHES redraws over ~BAR_SECONDS), blank lines around it,
# and ordinary lines; shell-less, as Loom runs stage commands.
REFRESHES = 1000
BAR_SECONDS = 12.0
PROGRESS_SCRIPT = f"""
import pathlib, sys, time
from tqdm import tqdm

print("progress: start", flush=True)
print(flush=True)
print("   ", flush=True)
for _ in tqdm(range({REFRESHES}), desc="bar", mininterval=0, miniters=1, file=sys.stderr):
    time.sleep({BAR_SECONDS / REFRESHES})
print(flush=True)
print("progress: done", flush=True)
pathlib.Path("progress.txt").write_text("ok")
"""
PROGRESS_STAGE = """
  progress:
    cmd: python progress.py
    deps:
      - progress.py
    outs:
      - progress.txt
"""
# Set through the two ways a run changes params: an overlay (-P) and an override (-S).
OVERLAY = {"word2vec": {"epochs": 1}}
OVERRIDE = "bpe.small.vocab_size=310"
# A section no stage reads, with a secret in it: the pipeline run must not log the secret.
SECRET_SECTION = {"publish": {"api_key": "s3cr3t-value", "region": "eu-west-1"}}


def add_progress_stage(root: Path, script: str = PROGRESS_SCRIPT) -> None:
    (root / "progress.py").write_text(script)
    add_stage(root, PROGRESS_STAGE)


@dataclass
class ForcedRun:
    root: Path
    flow_run_id: str
    parent: mlflow.entities.Run  # the MLflow pipeline run
    stage_runs: dict[str, mlflow.entities.Run]  # stage -> its MLflow run
    specs: dict[str, object]  # stage -> project.StageSpec
    warnings: list[str]  # what Prefect logged at WARNING and above during the run


@pytest.fixture(scope="module")
def forced(built_project, prefect_server, tmp_path_factory) -> ForcedRun:
    """`loom run --force -P overlay.yaml -S ...` on a copy of the tiny project with
    the progress stage added, with a Prefect tag concurrency limit on one of Loom's tags."""
    from prefect.client.orchestration import get_client

    root = tmp_path_factory.mktemp("prefect-ui") / "proj"
    shutil.copytree(built_project, root, symlinks=True)
    add_progress_stage(root)
    data = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**data, **SECRET_SECTION}, sort_keys=False))
    (root / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    experiment = f"test-prefect-ui-{os.getpid()}"
    # The session logs at WARNING; stage output is logged at INFO, which is what is read here.
    run_loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in run_loggers]
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="group:progress", concurrency_limit=1)
    warned = WarningsKept()
    logging.getLogger("prefect").addHandler(warned)
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.chdir(root):
            mp.setenv("LOOM_EXPERIMENT", experiment)
            for lg in run_loggers:
                lg.setLevel(logging.INFO)
            # One stage at a time: DVC rewrites dvc.lock in place when the flow commits a
            # stage, and a stage process starting meanwhile can read it half-written.
            args = ["run", "--force", "-P", "overlay.yaml", "-S", OVERRIDE]
            assert cli.main(args) == 0
    finally:
        logging.getLogger("prefect").removeHandler(warned)
        for lg, level in zip(run_loggers, levels, strict=True):
            lg.setLevel(level)
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag("group:progress")
    from flows.prefect_server import drain_prefect_clients

    drain_prefect_clients()  # the logs the flow still had queued

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("loom.pipeline") == "true"]
    stage_runs = {r.data.tags["loom.stage"]: r for r in runs if "loom.stage" in r.data.tags}
    with contextlib.chdir(root):  # DVC names stages relative to the working directory
        specs = {s.name: s for s in plan.select_specs(root, [])}
    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    return ForcedRun(root, flow_run_id, parent, stage_runs, specs, warned.messages)


class WarningsKept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def task_runs(flow_run_id: str) -> dict[str, object]:
    """stage name -> its Prefect task run, read through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {tr.name: tr for tr in found}


def test_task_graph_is_the_dvc_graph(forced):
    """Each task run's upstream inputs are exactly its stage's upstream stages in dvc.yaml;
    no argument links a task to the tasks that happened to finish before it."""
    runs = task_runs(forced.flow_run_id)
    assert set(runs) == {*ALL_STAGES, "progress"}
    name_of = {str(tr.id): name for name, tr in runs.items()}
    for name, tr in runs.items():
        linked = {k for k, inputs in tr.task_inputs.items() if inputs}
        assert linked <= {"wait_for"}, (name, tr.task_inputs)
        upstream = {name_of[str(i.id)] for i in tr.task_inputs.get("wait_for", [])}
        assert upstream == set(forced.specs[name].upstream), name
    assert {name_of[str(i.id)] for i in runs["tokenize@small"].task_inputs["wait_for"]} == {
        "corpus",
        "bpe@small",
    }
    assert not runs["stdlib_text"].task_inputs.get("wait_for")


def test_task_runs_carry_loom_tags(forced):
    runs = task_runs(forced.flow_run_id)
    assert set(runs["bpe@small"].tags) == {"loom", "pipeline:text", "group:bpe", "stage:bpe@small"}
    assert set(runs["corpus"].tags) == {"loom", "pipeline:text", "group:corpus", "stage:corpus"}
    # A plain command stage has no component, so no pipeline tag.
    assert set(runs["progress"].tags) == {"loom", "group:progress", "stage:progress"}
    for name, tr in runs.items():
        assert set(tr.tags) == set(pipeline.stage_tags(forced.specs[name]))
        # `progress` ran under the fixture's tag concurrency limit on `group:progress`.
        assert tr.state.is_completed(), (name, tr.state)
    # Prefect's thread pool warns of dead-locks for tasks that carry more tags than it has
    # workers; Loom's tags are the task runs', so a run says nothing of the kind.
    assert not [m for m in forced.warnings if "dead-lock" in m], forced.warnings


def test_progress_bars_do_not_flood_the_logs(forced):
    """1,000 tqdm refreshes over ~12 s: a handful of log lines for that stage, no blank ones;
    the stage's ordinary lines all there; a progress artifact at the bar's final 100 %."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId

    logs = flow_run_logs(forced.flow_run_id)
    assert all(log.message.strip() for log in logs)
    assert not [log for log in logs if log.message.rstrip().endswith(" |")]  # no empty lines
    runs = task_runs(forced.flow_run_id)
    mine = [log for log in logs if log.task_run_id == runs["progress"].id]
    lines = [log.message for log in mine if log.message.startswith("progress | ")]
    assert len(mine) <= 20, "\n".join(log.message for log in mine)
    assert "progress | progress: start" in lines and "progress | progress: done" in lines
    bar = [log for log in mine if "bar:" in log.message]
    assert re.search(r"bar: 100%.*1000/1000", bar[-1].message), lines  # the final state
    # One line when the bar starts, then at most one per 10 s, then the final state.
    span = (bar[-1].timestamp - bar[0].timestamp).total_seconds()
    assert 2 <= len(bar) <= 2 + span // pipeline.PROGRESS_LOG_SECONDS, (span, lines)
    # Stages that have bars of their own (bpe merges, tokenize) are bounded the same way.
    for name in ("bpe@small", "tokenize@small"):
        theirs = [log for log in logs if log.task_run_id == runs[name].id]
        assert len(theirs) <= 20, "\n".join(log.message for log in theirs)

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                task_run_id=ArtifactFilterTaskRunId(any_=[runs["progress"].id])
            )
        )
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert progress.data == 100.0 and progress.flow_run_id == runs["progress"].flow_run_id


def test_summary_artifact_links_every_stage_to_its_mlflow_run(forced):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        (summary,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["loom-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[forced.flow_run_id]),
            )
        )
    assert summary.type == "markdown"
    text = summary.data
    rows = {
        line.split("|")[1].strip(" `"): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == {*ALL_STAGES, "progress"}
    exp_id = forced.parent.info.experiment_id
    for stage, run in forced.stage_runs.items():
        status, seconds, metrics, link = rows[stage]
        assert status == "ran" and float(seconds) > 0
        url = f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run.info.run_id}"
        assert link == f"[{run.info.run_id}]({url})", stage
    assert "vocab_size=310" in rows["bpe@small"][2]
    assert rows["progress"][3] == "-"  # a plain command: no MLflow run of its own
    # The embedded store has no server: the artifact says which UI the links open in.
    assert "mlflow ui --backend-store-uri sqlite:" in text and "--port 5000" in text
    assert forced.parent.info.run_id in text


def test_pipeline_run_holds_the_params_the_stages_ran_with(forced):
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    parent = forced.parent
    got = parent.data.params
    assert got["params.bpe.small.vocab_size"] == "310"  # -S
    assert got["params.word2vec.epochs"] == "1"  # -P overlay
    assert got["params.stdlib_text.max_docs"] == "150"
    assert got["params.publish.region"] == "eu-west-1"
    assert not [k for k in got if "api_key" in k]
    # The stages ran with those values: their own runs say the same.
    assert forced.stage_runs["bpe@small"].data.params["vocab_size"] == "310"
    assert forced.stage_runs["word2vec@small"].data.params["epochs"] == "1"
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent.info.run_id, "params.yaml", tmp)
        logged = Path(path).read_text()
    assert "s3cr3t-value" not in logged
    on_disk = yaml.safe_load((forced.root / "params.yaml").read_text())
    del on_disk["publish"]["api_key"]
    assert yaml.safe_load(logged) == on_disk

    metrics = parent.data.metrics
    for stage, run in forced.stage_runs.items():
        keys = json.loads(run.data.tags["loom.key_metrics"])  # the component's key metrics
        assert keys, stage
        for key in keys:
            assert metrics[f"{stage.replace('@', '.')}.{key}"] == pytest.approx(
                run.data.metrics[key]
            ), (stage, key)
    assert metrics["bpe.small.vocab_size"] == 310
    assert not [k for k in metrics if "@" in k or k.endswith(("_seconds", "_per_second"))]
    assert metrics["stages_ran"] == len(ALL_STAGES) + 1


def test_mlflow_ui_links_never_carry_credentials():
    base = pipeline.mlflow_ui_base
    assert base("https://user:p%40ss@mlflow.example:8443/") == "https://mlflow.example:8443"
    assert base("http://TOKEN@10.0.0.5:5000/prefix") == "http://10.0.0.5:5000/prefix"
    assert base("sqlite:////tmp/x/mlflow.db") == "http://127.0.0.1:5000"
    assert base("databricks") is None and base("file:///tmp/mlruns") is None


def test_summary_markdown_escapes_cells():
    ran = plan.StageReport("a@x", "ran", 2.5, {"m": 0.25}, "r1", key_metrics=["m"])
    failed = plan.StageReport("b", "failed", error="exit 1: bad | value\nnext")
    text = plan.summary_markdown([ran, failed], lambda run_id: f"http://ui/{run_id}", "note")
    lines = text.splitlines()
    assert lines[2] == "| `a@x` | ran | 2.5 | m=0.25 | [r1](http://ui/r1) |"
    assert lines[3] == "| `b` | failed | - | exit 1: bad \\| value next | - |"
    assert "2 stage(s): 1 ran, 1 failed." in text and text.rstrip().endswith("note")


QUIET_SCRIPT = """
import sys
from tqdm import tqdm

for _ in tqdm(range(300), desc="bar", mininterval=0, miniters=1, file=sys.stderr):
    pass
open("progress.txt", "w").write("ok")
"""
CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")


def run_on_a_terminal(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run `argv` with stdout and stderr on a pseudo-terminal, as a user at a shell does;
    returns everything it wrote there."""
    leader, follower = pty.openpty()
    # A wide terminal: Prefect's console handler wraps its lines at the terminal's width.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 300, 0, 0))
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_loom_run_on_a_terminal_is_quiet(tmp_path, experiment):
    """`loom run` at a terminal, a first-time Prefect user, no Prefect API configured: its
    temporary server and Prefect say nothing about analytics or telemetry, nothing fails
    with a traceback; the stage's bar is drawn live on the terminal, not logged line by line."""
    root = make_project(tmp_path / "proj")
    add_progress_stage(root, QUIET_SCRIPT)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CI_VARIABLES and k not in ("DO_NOT_TRACK", "PREFECT_API_URL")
    }
    env["PREFECT_HOME"] = str(tmp_path / "fresh-prefect-home")  # Prefect's new-user notice
    env["PREFECT_LOGGING_LEVEL"] = "INFO"  # everything a user sees
    loom = str(Path(sys.executable).parent / "loom")
    out = run_on_a_terminal([loom, "run", "progress"], root, env, timeout=300)
    # Live: redrawn in place ("\r", then clear the line) on the terminal.
    assert out.count("\r\x1b[2Kprogress | bar:") >= 100
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)  # colours and cursor moves
    lowered = plain.lower()
    for noise in ("analytics", "telemetry", "usage data", "traceback", "how-to-guides"):
        assert noise not in lowered, plain
    assert "loom run: temporary Prefect server on http://127.0.0.1:" in plain
    assert "1 stage(s) ran" in plain
    # Logged: the bar's first state and its final one (the run takes under 10 s).
    logged = [ln for ln in plain.split("\n") if "Task run 'progress'" in ln and "bar:" in ln]
    assert len(logged) == 2 and "300/300" in logged[-1], logged
