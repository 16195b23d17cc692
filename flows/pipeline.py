"""The Prefect flow over the DVC DAG: one task per dvc.yaml stage, nothing hand-written.

Stages DVC sees as unchanged, with nothing stale upstream, are skipped up front (no task, no
MLflow run: a no-op run stays cheap). Every other stage is a task that asks DVC whether its
stage changed (after its upstream tasks finished), runs the stage's own `cmd` in a
subprocess outside any lock, then records the result in dvc.lock under one lock, one stage
at a time. So independent stages run concurrently (`--jobs N`) without
DVC's "Unable to acquire lock", and dvc.lock ends up exactly as `dvc repro` would write it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.states import Cancelled, Completed

from flows import (
    atomic,
    interrupts,
    orphans,
    params,
    plan,
    project,
    stage_runner,
    tracking,
    workspace,
)
from flows.plan import Orchestration, StageReport

__all__ = ["Orchestration", "StageFailed", "pipeline"]


class StageFailed(RuntimeError):
    """A stage command exited non-zero; the message carries the stage's own error."""


def _stage_env(
    root: Path, name: str, parent_run_id: str, flow_run_id: str, info: Path, tags: dict[str, str]
) -> dict[str, str]:
    env = dict(os.environ)
    # The stage cmd says `loom stage ...`: make this interpreter's `loom` the one found.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        {
            "DVC_ROOT": str(root),
            "DVC_STAGE": name,
            tracking.PARENT_RUN_ENV: parent_run_id,
            tracking.FLOW_RUN_ENV: flow_run_id,
            stage_runner.RUN_INFO_ENV: str(info),
            tracking.EXTRA_TAGS_ENV: json.dumps(tags),
        }
    )
    return env


def _run_cmd(
    spec: project.StageSpec, env: dict[str, str], logger: Any, parent: ParentRun
) -> tuple[int, list[str]]:
    """Run the stage's commands in turn, as DVC would (in wdir) but without a shell; stream
    their output; keep the tail. Each runs in its own session, so a terminal's Ctrl-C reaches
    `loom run` only, which stops them in order (`ParentRun.stop_stages`), and dies with
    `loom run` whatever kills it (`flows.orphans`)."""
    tail: deque[str] = deque(maxlen=60)
    for command in spec.commands:
        argv = project.command_argv(spec, command)
        with parent.lock:
            if parent.stopping:
                return 128 + signal.SIGTERM, ["loom run: interrupted before this stage started"]
            try:
                proc = subprocess.Popen(
                    orphans.guarded(argv),
                    cwd=spec.wdir,
                    env=env,
                    text=True,
                    errors="replace",
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:
                return 127, [f"{spec.name}: cannot run {argv[0]!r}: {err.strerror}"]
            parent.procs.add(proc)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                logger.info("%s | %s", spec.name, line.split("\r")[-1])
            rc = proc.wait()
        finally:
            with parent.lock:
                parent.procs.discard(proc)
        if rc != 0:
            return rc, list(tail)
    return 0, list(tail)


def _reason(name: str, rc: int, tail: list[str]) -> str:
    errors = [ln for ln in tail if ": error:" in ln]
    detail = errors[-1] if errors else "\n".join(tail[-8:])
    return f"stage {name!r} failed (exit code {rc}): {detail}"


@task(task_run_name="{spec.name}")
def run_stage_task(
    root: str,
    spec: project.StageSpec,
    force: bool,
    parent_key: str,
    flow_run_id: str,
    lock_order: list[str],
    tags: dict[str, str],
    publish: bool = False,
):
    """Skip if DVC says unchanged; else run the cmd and commit the stage to dvc.lock.

    publish: push the committed outputs and log dvc.lock on the pipeline run right away, so a
    re-run of this flow run after a crash (on a fresh clone) resumes after this stage.
    """
    logger = get_run_logger()
    rootp, name = Path(root), spec.name
    with project.dvc_repo(rootp) as repo:
        unchanged = not force and not project.changed(project.stage_named(repo, name))
    if unchanged:  # no stage result names its key metrics: the summary shows the first few
        report = StageReport(name, "skipped", metrics=plan.read_metrics(rootp, spec))
        return Completed(name="Skipped", message=f"{name}: unchanged (DVC)", data=report)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="loom-run-") as tmp:
        info = Path(tmp) / "run.json"
        parent = _PARENT_RUNS[parent_key]
        env = _stage_env(rootp, name, parent.id(), flow_run_id, info, tags)
        rc, tail = _run_cmd(spec, env, logger, parent)
        if rc != 0 and parent.stopping:  # loom run was interrupted: not this stage's failure
            return Cancelled(message=f"{name}: stopped, `loom run` was interrupted")
        if rc != 0:
            raise StageFailed(_reason(name, rc, tail))
        run_info = json.loads(info.read_text()) if info.exists() else {}
    project.commit(rootp, name, order=lock_order)
    if publish:
        project.push(rootp, [name])
        _log_lock(rootp, parent.id())
    metrics = run_info.get("metrics") or plan.read_metrics(rootp, spec)
    seconds = time.time() - started
    key = run_info.get("key_metrics") or []
    return StageReport(name, "ran", seconds, metrics, run_info.get("run_id", ""), key_metrics=key)


class ParentRun:
    """The flow's MLflow pipeline run, created when the first stage actually runs (tasks run
    in threads of the flow process; they find it in `_PARENT_RUNS` by key), and the stage
    processes running under it."""

    def __init__(
        self, root: Path, flow_run_id: str, targets: list[str] | None, force: bool, tags: dict
    ):
        self._args = (root, flow_run_id, targets, force, tags)
        self._lock = threading.Lock()
        self.started: str | None = None
        self.lock = threading.Lock()  # guards procs and stopping
        self.procs: set[subprocess.Popen] = set()
        self.stopping = False

    def id(self) -> str:
        with self._lock:
            if self.started is None:
                self.started = _start_parent_run(*self._args)
            return self.started

    def stop_stages(self, grace: float = 10.0) -> int:
        """Start no more stages; SIGTERM the running ones (each marks its MLflow run KILLED and
        keeps its last good outputs), SIGKILL what is left after `grace` seconds. Returns how
        many were running."""
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return len(procs)


_PARENT_RUNS: dict[str, ParentRun] = {}


def _prune_work_dirs(root: Path, every: list[str] | None, configs: dict[str, dict]) -> None:
    """Prune and report stale work dirs; `every`: all stage names (None: ask DVC, only if
    there is any work dir to judge)."""
    if every is None and stage_runner.work_dirs(root):
        with project.dvc_repo(root) as repo:
            every = [s.addressing for s in project.pipeline_stages(repo)]
    pruned = stage_runner.prune_work_dirs(root, every or [], configs)
    if pruned:
        listed = "; ".join(f"{os.path.relpath(p, root)} ({why})" for p, why in pruned)
        print(f"pruned {len(pruned)} stale stage work dir(s): {listed}")


@flow(name="loom-pipeline")
def pipeline(
    targets: list[str] | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    root: str | None = None,
    pull: bool = False,
    push: bool = False,
    tags: dict[str, str] | None = None,
    params_files: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the dvc.yaml DAG (or `targets` and their upstream) as Prefect tasks.

    pull: first fetch inputs and earlier outputs from the DVC remote (a fresh worker clone).
    push: after every stage succeeded, upload the outputs to the DVC remote.
    tags: extra MLflow tags for the pipeline run and every stage run (e.g. a sweep id).
    params_files: params overlays (e.g. params.gpu.yaml) merged before `overrides`.
    """
    from prefect.runtime import flow_run

    rootp = project.find_root(Path(root) if root else None)
    flow_run_id = str(flow_run.id or "")
    # Re-entrant: `loom run` holds it already; a deployment's flow run takes it here.
    with workspace.locked(rootp, f"loom run (Prefect flow run {flow_run_id})"):
        plan.apply_params(rootp, list(params_files or []), list(overrides or []))
        return _run(rootp, flow_run_id, targets, force, pull, push, tags)


def _run(
    rootp: Path,
    flow_run_id: str,
    targets: list[str] | None,
    force: bool,
    pull: bool,
    push: bool,
    tags: dict[str, str] | None,
) -> list[dict[str, Any]]:
    orchestration = plan.orchestration(params.load(rootp))
    specs = plan.select_specs(rootp, list(targets or []))
    names = [s.name for s in specs]
    if pull:
        resumed = _restore_lock(rootp, flow_run_id)
        if resumed:
            print(f"resuming flow run {flow_run_id}: dvc.lock of its earlier attempt {resumed}")
        print(f"dvc pull: {project.pull(rootp, names)} file(s) fetched")

    # Stages that are unchanged and have no stale upstream are settled now, without a task:
    # a no-op run costs one DVC status pass, no component import and no MLflow run.
    todo = plan.stages_to_run(rootp, specs, force)
    configs = plan.validate_specs(rootp, [s for s in specs if s.name in todo])
    _prune_work_dirs(rootp, names if not targets else None, configs)
    settled = {s.name: plan.skipped(rootp, s) for s in specs if s.name not in todo}
    if settled:
        print(f"unchanged (DVC), skipped: {', '.join(settled)}")

    # dvc.lock order as a sequential `dvc repro` would leave it (see project.commit).
    lock_order = project.locked_stages(rootp) + names
    extra_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    parent_key = uuid.uuid4().hex
    parent = _PARENT_RUNS[parent_key] = ParentRun(rootp, flow_run_id, targets, force, extra_tags)
    futures: dict[str, Any] = {}
    try:
        for spec in specs:
            if spec.name in settled:
                continue
            upstream = [futures[u] for u in spec.upstream if u in futures]
            retries = orchestration.retries_for(spec.name)
            futures[spec.name] = run_stage_task.with_options(
                retries=retries, retry_delay_seconds=orchestration.retry_delay_seconds
            ).submit(
                str(rootp),
                spec,
                force,
                parent_key,
                flow_run_id,
                lock_order,
                extra_tags,
                push,
                return_state=False,  # the default; Prefect types wait_for only alongside it
                wait_for=upstream,
            )
        reports = [settled[n] if n in settled else _report(n, futures[n]) for n in names]
    except BaseException as stop:  # SIGINT/SIGTERM: stop the stages, record it, re-raise
        stopped = parent.stop_stages()
        _PARENT_RUNS.pop(parent_key, None)
        if parent.started:
            _kill_parent_run(parent.started, stop, stopped)
        raise
    failed = [r for r in reports if r.status == "failed"]
    pushed = False if push else None  # None: not asked to push
    try:
        if push and not failed:  # only a fully successful run publishes its outputs
            print(f"dvc push: {project.push(rootp, names)} file(s) uploaded")
            pushed = True
    finally:
        _PARENT_RUNS.pop(parent_key, None)
        if parent.started:
            _end_parent_run(rootp, parent.started, reports, pushed)
    print(plan.format_summary(reports))
    if failed:
        raise StageFailed("; ".join(r.error for r in failed))
    return [asdict(r) for r in reports]


def _kill_parent_run(run_id: str, stop: BaseException, stopped: int) -> None:
    import mlflow

    why = f"interrupted by {interrupts.signal_name(stop)}; {stopped} running stage(s) stopped"
    client = mlflow.MlflowClient()
    client.set_tag(run_id, tracking.ERROR_TAG, why)
    client.set_terminated(run_id, "KILLED")


def _report(name: str, future: Any) -> StageReport:
    state = future.wait() or future.state
    if state.is_completed():
        return future.result()
    if state.is_failed() or state.is_crashed():
        try:
            future.result()
        except Exception as err:
            return StageReport(name, "failed", error=str(err))
        return StageReport(name, "failed", error=state.message or "")
    return StageReport(name, "not run", error="an upstream stage failed")


def _log_lock(root: Path, run_id: str) -> None:
    """dvc.lock as it is now, on the pipeline run (read under the DVC lock: no torn copy)."""
    import mlflow

    with project.DVC_LOCK, tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(root / "dvc.lock", Path(tmp) / "dvc.lock")
        mlflow.MlflowClient().log_artifact(run_id, str(Path(tmp) / "dvc.lock"))


def _restore_lock(root: Path, flow_run_id: str) -> str | None:
    """When this flow run ran before (a crash, then a retry), take the dvc.lock its last
    attempt logged: the stages it finished are then unchanged and skipped. Returns the MLflow
    run it came from."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not flow_run_id:
        return None
    experiment_id = tracking.setup(root)
    client = mlflow.MlflowClient()
    earlier = client.search_runs(
        [experiment_id],
        f"tags.`{tracking.PIPELINE_TAG}` = 'true' and "
        f"tags.`{tracking.FLOW_RUN_TAG}` = '{flow_run_id}'",
        order_by=["attributes.start_time DESC"],
    )
    for run in earlier:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                lock = Path(client.download_artifacts(run.info.run_id, "dvc.lock", tmp))
            except (MlflowException, OSError):
                continue
            atomic.write_text(root / "dvc.lock", lock.read_text())
            return run.info.run_id
    return None


def _start_parent_run(
    root: Path, flow_run_id: str, targets: list[str] | None, force: bool, extra: dict[str, str]
) -> str:
    import mlflow

    experiment_id = tracking.setup(root)
    tracking.end_stale_runs(experiment_id)
    tags = {tracking.PIPELINE_TAG: "true", **tracking.lineage_tags(root, flow_run_id), **extra}
    run = mlflow.MlflowClient().create_run(experiment_id, tags=tags, run_name="pipeline")
    mlflow.MlflowClient().log_param(run.info.run_id, "targets", json.dumps(list(targets or [])))
    mlflow.MlflowClient().log_param(run.info.run_id, "force", str(force))
    return run.info.run_id


def _end_parent_run(
    root: Path, run_id: str, reports: list[StageReport], pushed: bool | None
) -> None:
    """Counts, the summary, and dvc.lock: with it, `loom pull --run ID` fetches exactly the
    outputs this run produced, wherever it ran (a worker's clone is thrown away)."""
    import mlflow

    client = mlflow.MlflowClient()
    if (root / "dvc.lock").exists():
        client.log_artifact(run_id, str(root / "dvc.lock"))
    if pushed is not None:
        client.set_tag(run_id, tracking.DVC_PUSHED_TAG, str(pushed).lower())
    counts = {
        s: sum(r.status == s for r in reports) for s in ("ran", "skipped", "failed", "not run")
    }
    for status, n in counts.items():
        client.log_metric(run_id, f"stages_{status.replace(' ', '_')}", n)
    # log_dict is typed for a dict, but json-dumps any JSON value (a list here)
    client.log_dict(run_id, [asdict(r) for r in reports], "summary.json")  # type: ignore[arg-type]
    ok = not counts["failed"] and pushed is not False
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
