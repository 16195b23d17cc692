"""The Prefect flow over the DVC DAG: one task per dvc.yaml stage, nothing hand-written.

Stages DVC sees as unchanged, with nothing stale upstream, are skipped up front (no task, no
MLflow run: a no-op run stays cheap). Every other stage is a task that asks DVC whether its
stage changed (after its upstream tasks finished), runs the stage's own `cmd` in a
subprocess outside any lock, then records the result in dvc.lock under one lock, one stage
at a time. So independent stages run concurrently (`--jobs N`) without
DVC's "Unable to acquire lock", and dvc.lock ends up exactly as `dvc repro` would write it.

What Prefect shows of a flow run:
- the task graph is the DVC graph: a task's only upstream inputs are its stage's upstream
  stages (`_untracked` says why nothing else may be);
- task runs are tagged `loom`, `pipeline:<domain>`, `group:<foreach group>`, `stage:<name>`
  (`stage_tags`), for filtering and for tag concurrency limits;
- a stage's output is its task run's log, line by line, with its progress bars at most one
  line per 10 s (`StageOutput`); a terminal gets the bars live, and each task run a progress
  artifact following the bar's percentage;
- the summary table, each stage linked to its MLflow run, is the flow run's Markdown
  artifact `loom-summary`.
The MLflow pipeline run holds the resolved params.yaml (`params.*` params and the file) and
the key metrics of the stages that ran (`bpe.small.vocab_size`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

import prefect
from prefect import flow, get_run_logger, task
from prefect.states import Cancelled, Completed
from prefect.utilities.annotations import quote

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


# Stage output: lines for the Prefect log, progress refreshes for the terminal and an artifact.
_SEGMENT = re.compile(rb"([^\r\n]*)(\r\n|\n|\r)")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # cursor moves of nested tqdm bars
_PERCENT = re.compile(r"(?<!\d)(\d{1,3})%")  # tqdm: "bpe merges:  42%|####      | 42/100 [...]"
PROGRESS_LOG_SECONDS = 10.0  # at most one progress line per stage this often in the Prefect log
PROGRESS_ARTIFACT_SECONDS = 2.0  # at most one progress-artifact update per stage this often


class StageOutput:
    """A stage's merged stdout/stderr, read as bytes and split on both `\\r` and `\\n`.

    A segment ended by `\\n` is a line: it goes to the Prefect log and to the tail kept for
    the error message. A segment ended by `\\r` is a progress refresh (tqdm redraws its bar
    that way, ~10 times a second): read as text lines, each refresh was a log line of its
    own, and progress bars made most of a flow run's log. Refreshes go instead

    - to the terminal, live, when `loom run` has one (`terminal`), written directly with
      `\\r` and never through the Prefect logger;
    - to the Prefect log at most once per PROGRESS_LOG_SECONDS, plus the bar's final state
      (tqdm redraws it once more and ends it with `\\n`; a bar that clears itself instead
      logs the last refresh it drew);
    - to a Prefect progress artifact of the task run (`progress`: True), updated from the
      bar's `NN%` at most once per PROGRESS_ARTIFACT_SECONDS.

    Blank lines and blank refreshes (a bar clearing itself) are dropped.
    """

    def __init__(
        self,
        name: str,
        logger: Any,
        terminal: TextIO | None = None,
        progress: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.tail: deque[str] = deque(maxlen=60)
        self._logger, self._terminal, self._clock = logger, terminal, clock
        self._buffer = b""
        self._pending: str | None = None  # the newest refresh not logged yet
        self._after_refresh = False  # the last segment was a (non-blank) refresh
        self._logged_at: float | None = None  # when a refresh was last logged
        self._bar_shown = False  # a refresh is on the terminal's current line
        self._artifacts = progress
        self._artifact_id: Any = None
        self._percent: float | None = None  # the newest percentage parsed
        self._sent: tuple[float, float] | None = None  # (percentage, when) last sent

    def feed(self, data: bytes) -> None:
        """Take the next bytes the stage wrote; a segment is handled once its end arrived."""
        self._buffer += data
        done = 0
        for match in _SEGMENT.finditer(self._buffer):
            if match.group(2) == b"\r" and match.end() == len(self._buffer):
                break  # maybe the first half of a "\r\n": wait for the next bytes
            self._segment(match.group(1), match.group(2) != b"\r")
            done = match.end()
        self._buffer = self._buffer[done:]

    def close(self) -> None:
        """The stage's output ended: handle what is left, log the bar's final state."""
        if self._buffer:
            self._segment(self._buffer.rstrip(b"\r"), not self._buffer.endswith(b"\r"))
            self._buffer = b""
        self._log_pending()
        self._clear_bar()
        self._update_artifact(final=True)

    def _segment(self, raw: bytes, is_line: bool) -> None:
        text = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip()
        if is_line:
            self._line(text)
        else:
            self._refresh(text)

    def _line(self, text: str) -> None:
        if not text.strip():
            self._after_refresh = False
            return
        if not self._after_refresh:  # a bar cleared itself before this line: its last state
            self._log_pending()
        self._pending, self._after_refresh = None, False  # else this line is its final redraw
        self._log(text)

    def _refresh(self, text: str) -> None:
        if not text.strip():  # tqdm clearing its bar (leave=False, or around tqdm.write)
            self._after_refresh = False
            return
        self._pending, self._after_refresh = text, True
        if self._terminal is not None:
            self._terminal.write(f"\r\x1b[2K{self.name} | {text}")
            self._terminal.flush()
            self._bar_shown = True
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= PROGRESS_LOG_SECONDS:
            self._log_pending()
        found = _PERCENT.search(text)
        if found and int(found.group(1)) <= 100:
            self._percent = float(found.group(1))
            self._update_artifact()

    def _log_pending(self) -> None:
        if self._pending is not None:
            self._logged_at = self._clock()
            self._log(self._pending)
            self._pending = None

    def _log(self, text: str) -> None:
        self._clear_bar()  # the log handler prints this line where the bar was
        self.tail.append(text)
        self._logger.info("%s | %s", self.name, text)

    def _clear_bar(self) -> None:
        if self._terminal is not None and self._bar_shown:
            self._terminal.write("\r\x1b[2K")
            self._terminal.flush()
            self._bar_shown = False

    def _update_artifact(self, final: bool = False) -> None:
        """Create or update the task run's progress artifact, throttled; a failing Prefect
        API turns artifacts off for this stage (progress is a view; the stage goes on)."""
        percent, now = self._percent, self._clock()
        if not self._artifacts or percent is None:
            return
        if self._sent is not None:
            last, when = self._sent
            if percent == last or (not final and now - when < PROGRESS_ARTIFACT_SECONDS):
                return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self._artifact_id is None:
                self._artifact_id = create_progress_artifact(
                    percent, description=f"`{self.name}`: its current progress bar (tqdm)"
                )
            else:
                update_progress_artifact(self._artifact_id, percent)
        except Exception as err:  # the API is down or refused: keep running the stage
            self._artifacts = False
            self._logger.warning("%s | progress artifact turned off: %s", self.name, err)
            return
        self._sent = (percent, now)


def _run_cmd(
    spec: project.StageSpec, env: dict[str, str], output: StageOutput, parent: ParentRun
) -> int:
    """Run the stage's commands in turn, as DVC would (in wdir) but without a shell; stream
    their output through `output` (which keeps the tail). Each runs in its own session, so a
    terminal's Ctrl-C reaches `loom run` only, which stops them in order
    (`ParentRun.stop_stages`), and dies with `loom run` whatever kills it (`flows.orphans`)."""
    for command in spec.commands:
        argv = project.command_argv(spec, command)
        with parent.lock:
            if parent.stopping:
                output.tail.append("loom run: interrupted before this stage started")
                return 128 + signal.SIGTERM
            try:
                proc = subprocess.Popen(
                    orphans.guarded(argv),
                    cwd=spec.wdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:
                output.tail.append(f"{spec.name}: cannot run {argv[0]!r}: {err.strerror}")
                return 127
            parent.procs.add(proc)
        try:
            assert proc.stdout is not None
            # Bytes as they come (one read of the pipe at a time), not text lines: text mode
            # would turn every progress-bar refresh (a "\r") into a line of its own.
            while chunk := os.read(proc.stdout.fileno(), 65536):
                output.feed(chunk)
            output.close()
            rc = proc.wait()
        finally:
            with parent.lock:
                parent.procs.discard(proc)
        if rc != 0:
            return rc
    return 0


def _reason(name: str, rc: int, tail: list[str]) -> str:
    errors = [ln for ln in tail if ": error:" in ln]
    detail = errors[-1] if errors else "\n".join(tail[-8:])
    return f"stage {name!r} failed (exit code {rc}): {detail}"


T = TypeVar("T")


def _untracked(value: T) -> T:
    """`value` as a task argument Prefect hands over as is, without searching it for
    upstream results (Prefect's `quote`; typed as the value, which is what the task gets).

    Prefect records a task run's inputs by looking each argument up, down to every item,
    among the results of the flow's finished tasks, which it remembers by `id()` together
    with each object one level inside them. A stage's report carries its name, the very
    string object the lock order (and the spec) hold: so every task run was recorded as
    fed by every task run that had finished before it was created. The DAG's edges are
    passed as `wait_for`, and only they are the graph Prefect shows.
    """
    return cast(T, quote(value))


def stage_tags(spec: project.StageSpec) -> list[str]:
    """The Prefect tags of stage `spec`'s task run, to filter task runs by in the UI and the
    API and to put Prefect's tag concurrency limits on (e.g. one word2vec at a time:
    `prefect concurrency-limit create group:word2vec 1`):

    - `loom`: every task run of a Loom flow;
    - `pipeline:<first part of the component name>`: `pipeline:text` for `text.bpe` (none
      for a stage without `meta.component`);
    - `group:<stage name before "@">`: the foreach/matrix group, `group:bpe` for `bpe@small`
      (a plain stage is its own group: `group:corpus`);
    - `stage:<stage name>`: `stage:bpe@small`.

    They are given with `prefect.tags` around the submission (the task run's tags are the
    task's and the context's), not as the task's own: Prefect's thread pool warns of
    dead-locks for every task with upstream tasks and as many tags as workers, ten warnings
    in a `loom run`. None can happen here: tasks are submitted in topological order, and a
    task takes its tag-concurrency slots only once its upstream tasks finished, holding
    none while it waits.
    """
    tags = ["loom"]
    if spec.component:
        tags.append(f"pipeline:{spec.component.split('.')[0]}")
    return [*tags, f"group:{project.stage_group(spec.name)}", f"stage:{spec.name}"]


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
        terminal = sys.stderr if sys.stderr.isatty() else None
        output = StageOutput(name, logger, terminal=terminal, progress=True)
        rc = _run_cmd(spec, env, output, parent)
        if rc != 0 and parent.stopping:  # loom run was interrupted: not this stage's failure
            return Cancelled(message=f"{name}: stopped, `loom run` was interrupted")
        if rc != 0:
            raise StageFailed(_reason(name, rc, list(output.tail)))
        run_info = json.loads(info.read_text()) if info.exists() else {}
    project.commit(rootp, name, order=lock_order)
    if publish:
        uploaded = project.push(rootp, [name])
        logger.info("%s | dvc push: %d file(s) uploaded", name, uploaded)
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
        fetched = project.pull(rootp, names)
        print(f"dvc pull: {fetched} file(s) fetched; what the remote lacks, the stages make")

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
            # Upstream is wait_for alone: every argument is passed _untracked (see there).
            # Tags go on the task run, from the context of its submission (stage_tags).
            with prefect.tags(*stage_tags(spec)):
                futures[spec.name] = run_stage_task.with_options(
                    retries=retries, retry_delay_seconds=orchestration.retry_delay_seconds
                ).submit(
                    _untracked(str(rootp)),
                    _untracked(spec),
                    force,
                    _untracked(parent_key),
                    _untracked(flow_run_id),
                    _untracked(lock_order),
                    _untracked(extra_tags),
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
            # Each stage pushed its outputs when it finished (publish): what is left are the
            # outputs of stages skipped here, made and maybe pushed before.
            uploaded = project.push(rootp, names)
            print(f"dvc push: every output is on the remote ({uploaded} more uploaded)")
            pushed = True
    finally:
        _PARENT_RUNS.pop(parent_key, None)
        if parent.started:
            _end_parent_run(rootp, parent.started, reports, pushed)
        _publish_summary(rootp, reports, parent.started)
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
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, tags=tags, run_name="pipeline")
    client.log_param(run.info.run_id, "targets", json.dumps(list(targets or [])))
    client.log_param(run.info.run_id, "force", str(force))
    tracking.log_params_file(client, run.info.run_id, root)
    return run.info.run_id


def stage_metrics(reports: list[StageReport]) -> dict[str, float]:
    """The key metrics of the stages that ran, as the pipeline run's metrics: stage `bpe@small`'s
    `vocab_size` is `bpe.small.vocab_size` (MLflow metric names cannot hold "@"); wall-clock
    figures left out. A skipped stage's metrics are on the run that made its outputs."""
    return {
        f"{r.stage.replace('@', '.')}.{k}": float(r.metrics[k])
        for r in reports
        if r.status == "ran"
        for k in plan.key_metrics(r)
        if not tracking.is_wall_clock(k)
    }


def _end_parent_run(
    root: Path, run_id: str, reports: list[StageReport], pushed: bool | None
) -> None:
    """Counts, the summary, and dvc.lock: with it, `loom pull --run ID` fetches exactly the
    outputs this run produced, wherever it ran (a worker's clone is thrown away)."""
    import mlflow
    from mlflow.entities import Metric

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
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(k, v, now, 0) for k, v in stage_metrics(reports).items()]
    )
    # log_dict is typed for a dict, but json-dumps any JSON value (a list here)
    client.log_dict(run_id, [asdict(r) for r in reports], "summary.json")  # type: ignore[arg-type]
    ok = not counts["failed"] and pushed is not False
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


SUMMARY_ARTIFACT_KEY = "loom-summary"  # the flow run's Markdown summary (Prefect artifact key)
EMBEDDED_UI = "http://127.0.0.1:5000"  # where `mlflow ui` (the command `loom ui` prints) serves


def mlflow_ui_base(uri: str) -> str | None:
    """Where the MLflow UI of tracking store `uri` is served: the server itself for an
    http(s) URI (credentials removed: a link must not carry them); for the embedded SQLite
    store, the `mlflow ui` that `loom ui` prints the command for; None for other stores."""
    if uri.startswith("sqlite:"):
        return EMBEDDED_UI
    if not uri.startswith(("http://", "https://")):
        return None
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def _publish_summary(root: Path, reports: list[StageReport], parent_run_id: str | None) -> None:
    """The summary table as Markdown artifact `loom-summary` of the flow run, each stage's
    MLflow run a link into the MLflow UI. A view only: failing to make it (the Prefect API or
    the MLflow store refusing) is a warning, never a failed run."""
    try:
        markdown = _summary_markdown(root, reports, parent_run_id)
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(
            markdown, key=SUMMARY_ARTIFACT_KEY, description="loom run: stages, status, metrics"
        )
    except Exception as err:
        get_run_logger().warning("summary artifact %r not created: %s", SUMMARY_ARTIFACT_KEY, err)


def _summary_markdown(root: Path, reports: list[StageReport], parent_run_id: str | None) -> str:
    from flows.cli import ui_command

    uri = tracking.tracking_uri(root)
    base, experiment_id = mlflow_ui_base(uri), None
    if parent_run_id is not None and base is not None:  # stage runs share its experiment
        import mlflow

        experiment_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id

    def run_url(run_id: str) -> str | None:
        if experiment_id is None:
            return None
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"

    notes = []
    if parent_run_id is not None:
        url = run_url(parent_run_id)
        notes.append(
            f"Pipeline run: [{parent_run_id}]({url})" if url else f"Pipeline run: `{parent_run_id}`"
        )
    if uri.startswith("sqlite:") and experiment_id is not None:
        notes.append(
            f"The runs are in the embedded MLflow store {uri}: the links open once its UI is "
            f"up, on this machine: `{ui_command(root, uri)}` (`loom ui` prints it)."
        )
    elif base is None:
        notes.append(f"MLflow tracking store: {tracking.redact(uri)}")
    return plan.summary_markdown(reports, run_url, "\n\n".join(notes))
