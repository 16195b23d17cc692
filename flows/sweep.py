"""`loom sweep`: the pipeline once per point of a params grid, on Prefect (what
`dvc exp run --queue` + `dvc queue start` do).

Local mode runs every point in its own `git worktree` of HEAD (under `.loom/sweeps/`, removed
afterwards), so points never share a params.yaml or a dvc.lock and the main workspace is never
touched. A worktree's DVC cache is the project's cache: outputs a point does not change are
checked out from it, not recomputed, and what a point makes is committed to it and pushed to
the DVC remote before the worktree goes.
Pool mode asks a deployment for one flow run per point; its worker clones the deployed commit.

Every MLflow run of a point (its pipeline run and its stage runs) carries the tags
`loom.sweep_id`, `loom.sweep_index` and `loom.sweep_point` (the point as JSON), which is all
`compare.format_sweep` (`loom compare --sweep ID`) needs to put the grid back together.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from flows import compare, git, params, project, tracking
from flows.params import ParamsError

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import FlowRun
    from prefect.futures import PrefectFuture


class SweepError(RuntimeError):
    """A sweep cannot start (e.g. its deployment does not exist)."""


# ---- the grid ------------------------------------------------------------------------------


def _split_values(raw: str) -> list[str]:
    """Split at commas outside brackets and quotes: `"1,[2,3],'a,b'"` -> ["1", "[2,3]", "'a,b'"]."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(raw[start:i])
            start = i + 1
    items.append(raw[start:])
    return [item.strip() for item in items]


def parse_grid(specs: list[str]) -> list[dict[str, Any]]:
    """`-S` specs -> the grid's points: their cartesian product, the last spec varying fastest.

    `["a=1,2", "b=x,y"]` -> [{a: 1, b: "x"}, {a: 1, b: "y"}, {a: 2, b: "x"}, {a: 2, b: "y"}].
    Values parse as YAML, as `loom run -S` parses them ("0.5" -> 0.5, "true" -> True,
    "[1,2]" -> [1, 2]; commas inside brackets or quotes do not split). A spec with one value
    sets that key for every point.
    """
    if not specs:
        raise ParamsError("a sweep needs at least one KEY=V1,V2,... spec")
    axes: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ParamsError(
                f"sweep spec {spec!r}: expected KEY=V1,V2,..., e.g. bpe.small.vocab_size=512,1024"
            )
        if key in axes:
            raise ParamsError(f"sweep spec {spec!r}: key {key!r} is given twice")
        values: list[Any] = []
        for item in _split_values(raw):
            if not item:
                raise ParamsError(
                    f"sweep spec {spec!r}: empty value (quote it: '' for an empty string)"
                )
            try:
                _, value = params.parse_override(f"{key}={item}")
            except ParamsError as err:
                raise ParamsError(f"sweep spec {spec!r}: {err}") from None
            if any(_as_json(value) == _as_json(v) for v in values):
                raise ParamsError(f"sweep spec {spec!r}: value {item!r} is given twice")
            values.append(value)
        axes[key] = values
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _as_json(value: Any) -> str:
    return json.dumps(value, default=str)


def overrides_of(point: dict[str, Any]) -> list[str]:
    """A point as `loom run -S` overrides (JSON is YAML, so types survive the round trip)."""
    return [f"{key}={_as_json(value)}" for key, value in point.items()]


def point_tags(sweep_id: str, index: int, point: dict[str, Any]) -> dict[str, str]:
    return {
        tracking.SWEEP_ID_TAG: sweep_id,
        tracking.SWEEP_INDEX_TAG: str(index),
        tracking.SWEEP_POINT_TAG: _as_json(point),
    }


# ---- checks before any point runs ------------------------------------------------------------


def params_at(root: Path, commit: str) -> dict[str, Any]:
    """params.yaml as committed at `commit` (what a sweep's points start from)."""
    text = git.show(root, commit, params.PARAMS_FILE)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{params.PARAMS_FILE} at {commit[:10]}: not a mapping of sections")
    return data


def check_keys(current: dict[str, Any], keys: Iterable[str]) -> None:
    """Every key must exist already, as `loom run -S` requires: a typo must fail now, not
    once per point."""
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = params.section(current, parent) if parent else current
        if not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"sweep key {key!r}: no such key in committed {params.PARAMS_FILE}")


def uncommitted(root: Path) -> list[str]:
    """Tracked files changed since HEAD, and dvc.lock if git does not track it: a sweep runs
    HEAD plus the grid's overrides, so none of these changes take part."""
    found = []
    tracked = git.run(root, "status", "--porcelain", "--untracked-files=no", "--", ".")
    for line in tracked.splitlines():
        found.append(line[3:])
    lock = git.run(root, "status", "--porcelain", "--", "dvc.lock").strip()
    if lock.startswith("??"):
        found.append(lock[3:] + " (untracked: every point re-runs every stage)")
    return found


# ---- one point -----------------------------------------------------------------------------


def share_cache(root: Path, workspace: Path) -> None:
    """Give `workspace` the project's DVC cache and local config (remote credentials live
    there). DVC resolves relative paths on read and re-relativises them on write."""
    with project.dvc_repo(root) as main:
        cache_dir = main.cache.local_cache_dir
        local = main.config.read("local")
    with project.dvc_repo(workspace) as repo, repo.config.edit("local") as conf:
        for section, values in local.items():
            conf[section].update(values)
        conf["cache"]["dir"] = cache_dir


def _outcome(
    index: int, point: dict[str, Any], ok: bool, flow_run_id: Any = "", error: str | None = ""
) -> dict[str, Any]:
    return {
        "index": index,
        "overrides": point,
        "status": "succeeded" if ok else "failed",
        "flow_run_id": str(flow_run_id or ""),
        "parent_run_id": "",  # the point's MLflow pipeline run, found by its tags afterwards
        "error": "" if ok else error,
    }


def run_local_point(
    root: str,
    commit: str,
    workdir: str,
    api_url: str,
    sweep_id: str,
    index: int,
    point: dict[str, Any],
    targets: list[str] | None,
) -> dict[str, Any]:
    """The pipeline flow in a fresh worktree of `commit`, plus the point's overrides; outputs
    pushed to the DVC remote. Never raises: a failure is in the result.

    The flow runs in a process of its own, in the worktree: DVC resolves stage names and
    dvc.yaml against the working directory, which threads would share.
    """
    workspace = Path(workdir) / f"point-{index}"
    request = {
        "targets": targets,
        "overrides": overrides_of(point),
        "tags": point_tags(sweep_id, index, point),
        "flow_run_name": f"{sweep_id}-{index}",
        "prefect_tag": f"loom-sweep:{sweep_id}",
    }
    answer = Path(workdir) / f"point-{index}.json"
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONUNBUFFERED": "1"}
    try:
        with git.worktree(Path(root), commit, workspace) as point_root:
            share_cache(Path(root), point_root)
            # -P: `flows` from this installation, not from the worktree's checkout.
            cmd = [sys.executable, "-P", "-m", "flows.sweep", json.dumps(request), str(answer)]
            rc = subprocess.run(cmd, cwd=point_root, env=env).returncode
    except Exception as err:  # worktree or DVC setup failed: this point fails, the others go on
        return _outcome(index, point, False, error=f"{type(err).__name__}: {err}")
    if not answer.exists():
        return _outcome(index, point, False, error=f"the point's process exited with code {rc}")
    found = json.loads(answer.read_text())
    return _outcome(index, point, found["ok"], found["flow_run_id"], found["error"])


def _run_point_here(request: dict[str, Any], answer: Path) -> int:
    """`python -P -m flows.sweep REQUEST ANSWER`, in a point's worktree: run the pipeline flow
    there and write {"ok", "flow_run_id", "error"} to ANSWER."""
    root = Path.cwd()
    sys.path.insert(0, str(root))  # components from the point's checkout, as `loom` does
    from prefect import tags
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.pipeline import pipeline

    # One stage at a time per point: max_parallel bounds the sweep's stage processes.
    # Prefect types task_runner as TaskRunner[PrefectFuture[Any]], invariant: no
    # ThreadPoolTaskRunner[R] fits it (Prefect casts its own default runner alike).
    flow = pipeline.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=1),  # type: ignore[arg-type]
        flow_run_name=request["flow_run_name"],
    )
    with tags(request["prefect_tag"]):
        state = flow(
            targets=request["targets"],
            overrides=request["overrides"],
            root=str(root),
            pull=True,  # from the shared cache, else the remote; what neither has is re-made
            push=True,
            tags=request["tags"],
            return_state=True,
        )
    ok = state.is_completed()
    found = {"ok": ok, "flow_run_id": str(state.state_details.flow_run_id), "error": state.message}
    answer.write_text(json.dumps(found))
    return 0 if ok else 1


def run_pool_point(
    deployment: str,
    sweep_id: str,
    index: int,
    point: dict[str, Any],
    targets: list[str] | None,
) -> dict[str, Any]:
    """One flow run of `deployment` (its worker clones the deployed commit: prefect.yaml's pull
    steps), waited for until it ends. `targets` None keeps the deployment's own targets."""
    from prefect.deployments import run_deployment

    parameters: dict[str, Any] = {
        "overrides": overrides_of(point),
        "tags": point_tags(sweep_id, index, point),
        "pull": True,
        "push": True,
    }
    if targets:
        parameters["targets"] = targets
    try:
        # a FlowRun: called from sync code (Prefect types it sync-or-coroutine)
        run = cast(
            "FlowRun",
            run_deployment(
                deployment,
                parameters=parameters,
                timeout=None,
                flow_run_name=f"{sweep_id}-{index}",
            ),
        )
    except Exception as err:
        return _outcome(index, point, False, error=f"{type(err).__name__}: {err}")
    state = run.state
    ok = state is not None and state.is_completed()
    return _outcome(index, point, ok, run.id, state.message if state else "no final state")


def _check_deployment(name: str, commit: str, logger: Any) -> None:
    """The deployment must exist; warn when it runs another commit than this checkout's HEAD."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise SweepError(
                f"no Prefect deployment {name!r} (FLOW/DEPLOYMENT, e.g. "
                f"loom-pipeline/text-nightly; `loom deploy` creates them)"
            ) from None
    if deployment.version and deployment.version != commit:
        logger.warning(
            "deployment %s runs commit %s, not this checkout's HEAD %s",
            name,
            deployment.version[:10],
            commit[:10],
        )


# ---- the flow ------------------------------------------------------------------------------


def run_sweep(
    grid_specs: list[str],
    targets: list[str] | None = None,
    root: str | None = None,
    max_parallel: int = 2,
    pool_deployment: str | None = None,
    metric: str | None = None,
    descending: bool = False,
) -> dict[str, Any]:
    """Run the pipeline (or `targets` and their upstream) once per grid point, at most
    `max_parallel` points at once; print the grid's table; return the sweep id and, per point,
    its overrides, status, Prefect flow run id and MLflow pipeline run id.

    pool_deployment: "FLOW/DEPLOYMENT" to run the points on that deployment's work pool
    instead of in local worktrees. metric, descending: how the final table is sorted.
    """
    from prefect import get_run_logger, task
    from prefect.futures import as_completed

    if max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
    rootp = project.find_root(Path(root) if root else None)
    points = parse_grid(grid_specs)
    commit = git.head(rootp)  # every point runs this one commit
    check_keys(params_at(rootp, commit), points[0])
    logger = get_run_logger()
    dirty = uncommitted(rootp)
    if dirty:
        logger.warning(
            "not committed, so not part of the sweep (it runs HEAD %s + overrides): %s",
            commit[:10],
            ", ".join(dirty[:8]) + (" ..." if len(dirty) > 8 else ""),
        )
    if pool_deployment:
        _check_deployment(pool_deployment, commit, logger)
    sweep_id = "sw-" + secrets.token_hex(4)
    logger.info("sweep %s: %d point(s), at most %d at once", sweep_id, len(points), max_parallel)

    # Worktrees on the project's filesystem (cache links work, no tmpfs fills up) and
    # git-ignored; DVC skips them as nested repositories.
    workdir = rootp / ".loom" / "sweeps" / sweep_id
    point_task: Task[..., dict[str, Any]]
    args: list[tuple[Any, ...]]
    if pool_deployment:
        point_task = task(name="sweep-point", task_run_name="point {index}")(run_pool_point)
        args = [(pool_deployment, sweep_id, i, p, targets) for i, p in enumerate(points)]
    else:
        point_task = task(name="sweep-point", task_run_name="point {index}")(run_local_point)
        workdir.mkdir(parents=True)
        api_url = _api_url()
        args = [
            (str(rootp), commit, str(workdir), api_url, sweep_id, i, p, targets)
            for i, p in enumerate(points)
        ]
    # Stage runs in a worktree would default to the worktree's own mlflow/ store, deleted with
    # it: every run of the sweep goes to the project's store.
    with tracking.environ("MLFLOW_TRACKING_URI", tracking.tracking_uri(rootp)):
        tracking.setup(rootp)  # the experiment is created at the project's artifact root
        try:
            futures: list[PrefectFuture[dict[str, Any]]] = []
            running: list[PrefectFuture[dict[str, Any]]] = []
            for a in args:  # a sliding window, whatever the task runner's size
                if len(running) >= max_parallel:
                    running.remove(next(as_completed(running)))
                running.append(point_task.submit(*a))
                futures.append(running[-1])
            results = [f.result() for f in futures]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        runs = {p.index: p.parent_run_id for p in compare.collect(rootp, sweep_id)}
        for result in results:
            result["parent_run_id"] = runs.get(result["index"], "")
        print(compare.format_sweep(rootp, sweep_id, metric, descending))
    return {"sweep_id": sweep_id, "points": results}


def _api_url() -> str:
    """The Prefect API this flow reports to (a temporary server's too), for the points'
    processes."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)


@functools.cache
def _sweep_flow() -> Any:
    from prefect import flow

    return flow(name="loom-sweep")(run_sweep)


def __getattr__(name: str) -> Any:
    # `sweep`, the Prefect flow, is made on first use: importing Prefect takes over a second,
    # which the grid's checks (and their tests) do without.
    if name == "sweep":
        return _sweep_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(_run_point_here(json.loads(sys.argv[1]), Path(sys.argv[2])))
