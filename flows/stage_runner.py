"""`loom stage NAME`: the one entry point every dvc.yaml stage calls.

Order matters: everything that can be checked is checked before any work (params, config,
I/O binding, inputs present, tracking reachable); outputs are staged and swapped in only on
success; the MLflow run records the outcome either way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from components import registry
from components.config import build, identity, runtime_keys, to_dict
from components.stage import Dataset, Stage, StageInputError, StageIO
from flows import (
    atomic,
    interrupts,
    launch,
    live,
    params,
    project,
    reports,
    tracking,
    workspace,
)

RUN_INFO_ENV = "LOOM_RUN_INFO"  # where `loom run` asks the stage to leave its run id + metrics
WORK_DIR_ENV = "LOOM_WORK_DIR"  # stable base directory for stages' resumable work dirs


@dataclass
class Outcome:
    """What `loom stage` hands back to a `loom run` (as JSON at $LOOM_RUN_INFO): the one channel
    by which the flow learns a stage's metrics, without importing its component."""

    run_id: str
    metrics: dict[str, float]
    seconds: float
    key_metrics: list[str]  # the few a summary shows (the component's `Stage.key_metrics`)


def bind(spec: project.StageSpec, stage: Stage) -> None:
    """meta.inputs/outputs must name exactly the component's inputs/outputs (inputs it declares
    optional may be left out), and be declared in deps/outs, or DVC would not track what the
    component really reads and writes."""
    for kind, have, want, optional, declared, field in (
        ("inputs", spec.inputs, stage.inputs, stage.optional_inputs, spec.deps, "deps"),
        ("outputs", spec.outputs, stage.outputs, (), spec.outs, "outs"),
    ):
        if not set(want) <= set(have) <= set(want) | set(optional):
            expected = sorted(want) + [f"{name} (optional)" for name in sorted(optional)]
            raise project.ProjectError(
                f"dvc.yaml: stage {spec.name!r}: meta.{kind} names {sorted(have)}, but component "
                f"{stage.name!r} expects {expected}"
            )
        for role, path in have.items():
            if not project.covered(path, declared):
                raise project.ProjectError(
                    f"dvc.yaml: stage {spec.name!r}: meta.{kind}.{role} = {path!r} is not declared "
                    f"in its {field} {declared}"
                )


def prepare(
    root: Path, name: str, spec: project.StageSpec | None = None
) -> tuple[project.StageSpec, Stage, Any]:
    """Resolve and validate stage `name` without doing any work."""
    all_params = params.load(root)
    spec = spec or project.load_spec(root, name)
    if not spec.component:
        raise project.ProjectError(f"dvc.yaml: stage {name!r} has no meta.component to run")
    stage = registry.load(spec.component)
    section = params.section(all_params, spec.config_key) if spec.config_key else {}
    section = _with_runtime(all_params, spec, stage, section)
    config = build(stage.config, section, where=f"{params.PARAMS_FILE}: {spec.config_key}")
    launch_processes(all_params, spec, stage)
    _system_metrics(all_params, spec)  # checked with the rest, before any work
    bind(spec, stage)
    return spec, stage, config


RUNTIME_SECTION = "runtime"  # params.yaml: runtime.<stage> = that stage's runtime knobs
LAUNCH_KNOBS = {
    "nproc": "processes to launch the stage on, under torchrun (default 1)",
    "system_metrics": "MLflow samples CPU, memory, disk, network (and GPU) while it runs",
}


def runtime_name(stage: str) -> str:
    """The key of stage `stage` under `runtime:`: its dvc.yaml name without a foreach key
    ("word2vec@small" -> "word2vec"; DVC's "path/dvc.yaml:NAME" addresses too)."""
    return project.stage_group(stage)


def runtime_knobs(all_params: dict, name: str) -> dict[str, Any]:
    """`runtime.<stage>` of params.yaml as dotted keys ("device", "train.compile")."""
    base = runtime_name(name)
    where = f"{params.PARAMS_FILE}: {RUNTIME_SECTION}.{base}"
    runtime = (all_params.get(RUNTIME_SECTION) or {}).get(base)
    if runtime is None:
        return {}
    if not isinstance(runtime, dict):
        raise params.ParamsError(f"{where} = {runtime!r}: expected a mapping")
    return _dotted(runtime)


def launch_processes(all_params: dict, spec: project.StageSpec, stage: Stage) -> int:
    """`runtime.<stage>.nproc` (default 1), checked: more than one needs a distributed stage."""
    nproc = runtime_knobs(all_params, spec.name).get("nproc", 1)
    key = f"{params.PARAMS_FILE}: {RUNTIME_SECTION}.{runtime_name(spec.name)}.nproc"
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise params.ParamsError(f"{key} = {nproc!r}: expected an int >= 1")
    if nproc > 1 and not stage.distributed:
        raise params.ParamsError(
            f"{key} = {nproc}: component {stage.name!r} runs on one process only "
            "(its Stage is not `distributed`)"
        )
    return nproc


def _system_metrics(all_params: dict, spec: project.StageSpec) -> bool:
    """`runtime.<stage>.system_metrics` (default false): MLflow's system metrics monitor runs
    beside the stage (`system/...` metrics every $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL s,
    10 by default; GPU ones when `nvidia-ml-py` is installed). On in params.gpu.yaml."""
    value = runtime_knobs(all_params, spec.name).get("system_metrics", False)
    if not isinstance(value, bool):
        key = f"{RUNTIME_SECTION}.{runtime_name(spec.name)}.system_metrics"
        raise params.ParamsError(f"{params.PARAMS_FILE}: {key} = {value!r}: expected true or false")
    return value


def _dotted(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"compile": "auto"}} -> {"train.compile": "auto"} (values as they are)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        out.update(_dotted(value, full) if isinstance(value, dict) and value else {full: value})
    return out


def _with_runtime(all_params: dict, spec: project.StageSpec, stage: Stage, section: Any) -> Any:
    """The stage's params section with its runtime knobs from `runtime.<stage>` merged in.

    A runtime knob (`components.config.runtime_field`: device, threads, compile, progress)
    says how the work runs, not what it makes. It lives outside the stage's own section,
    which the stage lists under `params` in dvc.yaml: so changing it re-runs nothing. The
    launch knobs (`nproc`) are the runner's, for every component stage."""
    knobs = runtime_keys(stage.config)
    base = runtime_name(spec.name)
    if section is not None and not isinstance(section, dict):
        raise params.ParamsError(
            f"{params.PARAMS_FILE}: {spec.config_key} = {section!r}: expected a mapping of "
            f"the config keys of component {stage.name!r}"
        )
    flat = _dotted(section) if isinstance(section, dict) else {}
    for key in knobs:
        if key in flat:
            raise params.ParamsError(
                f"{params.PARAMS_FILE}: {spec.config_key}.{key} is a runtime knob of stage "
                f"{spec.name!r}: set it under {RUNTIME_SECTION}.{base}.{key}, where changing "
                "it does not re-run the stage"
            )
    merged = dict(section or {})
    for key, value in runtime_knobs(all_params, spec.name).items():
        if key in LAUNCH_KNOBS:
            continue
        if key not in knobs:
            raise params.ParamsError(
                f"{params.PARAMS_FILE}: {RUNTIME_SECTION}.{base}.{key}: not a runtime knob of "
                f"stage {spec.name!r}; expected one of {[*knobs, *LAUNCH_KNOBS]}"
            )
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node[part] = node = dict(node.get(part) or {})
        node[leaf] = value
    return merged


def run_stage(root: Path, name: str) -> Outcome:
    import mlflow

    spec, stage, config = prepare(root, name)
    inputs = {role: root / p for role, p in spec.inputs.items()}
    for role, path in inputs.items():
        if not path.exists():
            raise StageInputError(f"stage {name!r}: input {role!r} not found: {path}")
    for rel in spec.metrics + spec.plots:  # written after the work: check them before it
        atomic.check_writable((root / rel).parent)
    experiment_id = tracking.setup(root)
    if not os.environ.get(tracking.PARENT_RUN_ENV):  # a `loom run` sweeps once for its stages
        tracking.end_stale_runs(experiment_id)

    flow_run_id = os.environ.get(tracking.FLOW_RUN_ENV) or None
    tags = {
        tracking.STAGE_TAG: name,
        tracking.COMPONENT_TAG: stage.name,
        tracking.COMPONENT_VERSION_TAG: stage.version,
        tracking.CMD_TAG: spec.cmd,
        tracking.KEY_METRICS_TAG: json.dumps(list(stage.key_metrics)),
        **tracking.lineage_tags(root, flow_run_id, source=f"loom stage {name}"),
    }
    known = project.digests(root, spec.deps)  # DVC md5 by path: tags and datasets share it
    tags.update({f"{tracking.DEP_TAG_PREFIX}{p}": d for p, d in known.items()})
    tags.update(tracking.dvc_experiment_tags())
    tags.update(tracking.extra_tags())
    parent = os.environ.get(tracking.PARENT_RUN_ENV) or None
    exp_parent = None  # `dvc exp run` (no `loom run` above): one parent run per experiment
    if parent is None and tracking.dvc_experiment():
        parent = exp_parent = tracking.experiment_parent_run(root, experiment_id)
    resolved = to_dict(config)
    system_metrics = _system_metrics(params.load(root), spec)

    with (
        claim_work_dir(work_dir(root, name, identity(config), known), f"loom stage {name}") as work,
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=name,
            parent_run_id=parent,
            tags=tags,
            log_system_metrics=True if system_metrics else None,  # None: MLflow's env var
        ) as run,
    ):
        run_id = run.info.run_id
        try:
            metrics = _tracked_run(root, spec, stage, config, resolved, work, inputs, known)
        except interrupts.Interrupted as stop:
            mlflow.set_tag(tracking.ERROR_TAG, f"interrupted by {stop.name}")
            mlflow.end_run("KILLED")
            tracking.end_experiment_parent_run(exp_parent, "KILLED")
            raise
        except BaseException:
            tracking.end_experiment_parent_run(exp_parent, "FAILED")
            raise
    tracking.end_experiment_parent_run(exp_parent, "FINISHED")

    outcome = Outcome(run_id, metrics, metrics["stage_seconds"], list(stage.key_metrics))
    if os.environ.get(RUN_INFO_ENV):
        atomic.write_json(Path(os.environ[RUN_INFO_ENV]), outcome.__dict__)
    return outcome


def _tracked_run(
    root: Path,
    spec: project.StageSpec,
    stage: Stage,
    config: Any,
    resolved: dict,
    work: Path,
    inputs: dict[str, Path],
    known: dict[str, str],
) -> dict[str, float]:
    """Inside the stage's active MLflow run: do the work, swap the outputs in, record them.
    Returns the metrics (wall-clock ones included)."""
    import mlflow

    run_id = cast("mlflow.ActiveRun", mlflow.active_run()).info.run_id
    client = mlflow.MlflowClient()
    started = time.time()
    _link_resumed_run(work, run_id, spec.name, identity(config))
    mlflow.log_params(tracking.flatten(resolved))
    # What every upstream output was made with, so the compare view of evaluation runs alone
    # answers "which vocab_size won?" (from dvc.lock: the params each upstream stage ran with).
    upstream = project.upstream_params(root, spec.deps)
    for stage_name, values in upstream.items():
        prefix = f"{tracking.UPSTREAM_PARAM_PREFIX}{runtime_name(stage_name)}"
        mlflow.log_params(tracking.flatten(values, prefix))
    if upstream:
        mlflow.set_tag(tracking.UPSTREAM_TAG, json.dumps(sorted(upstream)))
    mlflow.log_dict(resolved, "config.json")
    for role, path in inputs.items():
        _log_dataset(root, role, path, "input", known)

    targets = {role: root / p for role, p in spec.outputs.items()}
    logger = live.StageLog(client, run_id)
    try:
        with atomic.staged_outputs(targets) as scratch:
            io = StageIO(inputs=inputs, outputs=scratch, work=work, log=logger)
            nproc = launch_processes(params.load(root), spec, stage)
            if nproc > 1:  # rank 0 tracks live in its own process; its series come back
                mlflow.set_tag(tracking.NPROC_TAG, str(nproc))
                result, ranks_series = launch.torchrun(
                    cast(str, spec.component), config, io, nproc, run_id
                )
            else:
                result, ranks_series = stage.run(config, io), {}
    except Exception as err:
        logger.flush()  # what was reported before the failure stays in MLflow
        full = _disk_full(err, targets)
        mlflow.set_tag(tracking.ERROR_TAG, f"{type(full or err).__name__}: {full or err}"[:5000])
        if full is not None:
            raise full from err
        raise
    _remove_work_dir(root, work)
    seconds = time.time() - started
    metrics = {k: float(v) for k, v in result.metrics.items()}
    metrics["stage_seconds"] = round(seconds, 3)
    logger.flush()
    write_reports(root, spec, metrics, {**logger.series(), **ranks_series, **result.curves})

    out_digests = project.digests(root, spec.outs + spec.metrics + spec.plots)
    mlflow.set_tags({f"{tracking.OUT_TAG_PREFIX}{p}": d for p, d in out_digests.items()})
    known.update(out_digests)
    from flows import models  # the models this stage evaluated (here), those it made (below)

    for model_id in models.link_evaluated(spec, stage, known):
        mlflow.log_metrics(metrics, model_id=model_id)
    tracking.log_curves(client, run_id, result.curves)
    final = StageIO(inputs=inputs, outputs=targets)  # where the outputs are now
    # Under their DVC directories (metrics/, plots/): a stage's metrics and plots files share
    # a name (bpe_small.json), and one must not overwrite the other as an artifact.
    for rel in spec.metrics + spec.plots:
        if (root / rel).is_file():
            mlflow.log_artifact(str(root / rel), os.path.dirname(rel) or None)
    for path in map(final.path, result.artifacts):
        if path.is_file():
            mlflow.log_artifact(str(path))
    for role, path in targets.items():
        _log_dataset(root, role, path, "output", known)
    for ds in result.datasets:
        _log_dataset(root, ds.name, final.path(ds.path), ds.context, known, ds)
    models.log_models(root, spec, stage, known)  # a failure fails the stage

    return metrics


def work_dir(root: Path, name: str, config: dict, deps: dict[str, str]) -> Path:
    """The stage's resumable work directory: keyed by stage, config and dependency digests, so
    a rerun after a kill finds its checkpoints and a changed stage never resumes stale ones.
    Under $LOOM_WORK_DIR when set (a worker's stable disk: each deployment run clones afresh),
    else `.loom/work/` in the project."""
    key = json.dumps([name, config, deps], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return _work_base(root) / f"{name.replace('@', '-')}-{digest}"


@contextlib.contextmanager
def claim_work_dir(work: Path, command: str, spares: int = 16) -> Iterator[Path]:
    """Own `work`, or when a live process owns it, a spare beside it (`<work>.1`, ...).

    Two workspaces on one work disk (two workers of one machine, both running the same stage
    at the same commit) each train on their own; neither resumes from the other's live
    checkpoint. A spare that a killed run left work in is taken before an empty one, so a
    rerun still resumes wherever its first attempt was.
    """
    candidates = [work, *(work.with_name(f"{work.name}.{i}") for i in range(1, spares + 1))]
    left = [c for c in candidates if (c / RUN_RECORD).is_file()]
    busy = None
    for candidate in [*left, *candidates]:
        owned = contextlib.ExitStack()
        try:
            owned.enter_context(workspace.work_dir_locked(candidate, command))
        except workspace.WorkDirBusy as err:
            busy = busy or err
            continue
        with owned:
            yield candidate
        return
    raise busy or workspace.WorkDirBusy(f"{work}: no free work directory")


RUN_RECORD = "mlflow-run.json"  # in a work dir: the MLflow run that last worked in it
WORK_TTL_DAYS = 14  # a work dir untouched this long is pruned, whatever it holds


def _work_base(root: Path) -> Path:
    return Path(os.environ.get(WORK_DIR_ENV) or root / ".loom" / "work")


def work_dirs(root: Path) -> list[Path]:
    """The stage work dirs there are now (of this project, or on the shared $LOOM_WORK_DIR)."""
    base = _work_base(root)
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def prune_work_dirs(
    root: Path, stages: list[str], configs: dict[str, dict], now: float | None = None
) -> list[tuple[Path, str]]:
    """Remove the work dirs that can never be resumed; returns (dir, why) for each.

    A failed or killed stage leaves its work dir for the next run with the same config and
    inputs. One is stale when its stage is no longer in dvc.yaml (`stages`: every name), when
    that stage's config is now another (`configs`: name -> current resolved config, for the
    stages this run selected), or when nothing touched it for WORK_TTL_DAYS. A dir that a live
    process owns is left alone. Under $LOOM_WORK_DIR (a disk that other projects' runs may
    share) only the age rule applies.
    """
    shared = bool(os.environ.get(WORK_DIR_ENV))
    now = time.time() if now is None else now
    pruned = []
    for work in work_dirs(root):
        try:
            record = json.loads((work / RUN_RECORD).read_text())
        except (OSError, ValueError):
            record = {}
        stage, config = record.get("stage"), record.get("config")
        age = now - max((p.stat().st_mtime for p in work.rglob("*")), default=work.stat().st_mtime)
        if age > WORK_TTL_DAYS * 86400:
            why = f"untouched for {age / 86400:.0f} days"
        elif shared:
            continue
        elif stage is not None and stage not in stages:
            why = f"stage {stage!r} is no longer in dvc.yaml"
        elif stage in configs and config != configs[stage]:
            why = f"the config of {stage!r} has changed since"
        else:
            continue
        if workspace.work_dir_in_use(work):
            continue
        shutil.rmtree(work, ignore_errors=True)
        pruned.append((work, why))
    return pruned


def _link_resumed_run(work: Path, run_id: str, name: str, config: dict) -> None:
    """A work dir left with work in it by an earlier run (killed or failed) of the same
    stage, config and inputs: tag this run as resuming that one. Then record this run as the
    dir's latest (the pruner reads the stage and config from the record too)."""
    import mlflow

    record = work / RUN_RECORD
    try:
        earlier = json.loads(record.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        earlier = None
    left = [p for p in work.iterdir() if p.name not in (RUN_RECORD, workspace.OWNER_FILE)]
    if earlier and left:
        mlflow.set_tag(tracking.RESUMED_FROM_TAG, earlier)
    atomic.write_json(record, {"run_id": run_id, "stage": name, "config": config})


def _disk_full(err: BaseException, targets: dict[str, Path]) -> OSError | None:
    """ENOSPC often carries no file name: say which outputs it hit and how much is free."""
    if not (isinstance(err, OSError) and err.errno == errno.ENOSPC):
        return None
    where = err.filename or ", ".join(str(t.parent) for t in targets.values()) or "?"
    try:
        free = shutil.disk_usage(next(iter(targets.values())).parent).free / 2**20
        left = f"; {free:.0f} MiB free there now"
    except (OSError, StopIteration):
        left = ""
    return OSError(
        errno.ENOSPC,
        f"no space left on the device while writing {where}{left}; the last good outputs "
        "are untouched, free some space and run it again",
    )


def _remove_work_dir(root: Path, work: Path) -> None:
    """Drop a finished stage's work dir, and the project's `.loom/work/` and `.loom/` when
    that leaves them empty."""
    shutil.rmtree(work, ignore_errors=True)
    for parent in (work.parent, work.parent.parent):
        if parent in (root / ".loom" / "work", root / ".loom"):
            try:
                parent.rmdir()
            except OSError:
                break  # not empty (services state, sweeps, other stages' work)


def _log_dataset(
    root: Path,
    name: str,
    path: Path,
    context: str,
    known: dict[str, str],
    ds: Dataset | None = None,
) -> None:
    """Record a data set by reference with its DVC digest (its content address in the cache);
    `known` holds digests already computed, by path relative to root."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    if not path.exists():
        return
    rel = os.path.relpath(path, root)
    if rel not in known:  # e.g. a file inside an output directory
        known.update(project.digests(root, [rel]))
    digest = known.get(rel, "")
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local
        warnings.simplefilter("ignore")
        # Repository-relative: the same data has the same source on every machine (the digest
        # says which version; `dvc pull` fetches it by that from the remote).
        source = resolve_dataset_source(rel)
    # MetaDataset leaves mlflow's Dataset.profile abstract, but Dataset is no ABC: it builds
    dataset = MetaDataset(source=source, name=name, digest=digest[:36] or None)  # type: ignore[abstract]
    tags = {"dvc.md5": digest, "path": rel}
    if ds is not None and ds.num_rows is not None:
        tags["num_rows"] = str(ds.num_rows)
    tracking.log_input(dataset, context, tags)


def write_reports(
    root: Path,
    spec: project.StageSpec,
    metrics: dict[str, float],
    curves: dict[str, list[tuple[int, float]]],
) -> None:
    """The stage's declared DVC metrics (JSON/YAML) and plots (JSON records by step) files.

    Wall-clock metrics (`tracking.is_wall_clock`) go to MLflow only: the DVC metrics file is
    a versioned output, and the same inputs must give the same bytes (and the same dvc.lock).
    """
    kept = {k: v for k, v in metrics.items() if not tracking.is_wall_clock(k)}
    document = reports.nested(spec.name, kept)  # {"bpe": {...}}: see flows/reports.py
    for rel in spec.metrics:
        target = root / rel
        if target.suffix in (".yaml", ".yml"):
            import yaml

            atomic.write_text(target, yaml.safe_dump(document, sort_keys=True))
        else:
            atomic.write_json(target, document)
    for rel in spec.plots:
        rows: dict[int, dict[str, float]] = {}
        for curve, series in curves.items():
            for step, value in series:
                rows.setdefault(int(step), {"step": int(step)})[curve] = float(value)
        atomic.write_json(root / rel, [rows[s] for s in sorted(rows)])


KNOWN_ERRORS = (
    params.ParamsError,
    project.ProjectError,
    registry.UnknownComponentError,
    tracking.TrackingError,
    StageInputError,
    ValueError,
)


def main(name: str) -> int:
    """CLI body of `loom stage NAME`: exit 0 on success, 1 with a one-line reason on failure,
    128 + N on signal N (its MLflow run is then KILLED, the last good outputs kept)."""
    try:
        with interrupts.handled():
            root = project.find_root()
            with workspace.locked(root, f"loom stage {name}"):
                outcome = run_stage(root, name)
    except interrupts.Interrupted as stop:
        print(f"loom stage {name}: interrupted by {stop.name}; outputs unchanged", file=sys.stderr)
        return stop.exit_code
    except KNOWN_ERRORS as err:
        print(f"loom stage {name}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno == errno.ENOSPC:
            print(f"loom stage {name}: error: {err.strerror}", file=sys.stderr)
            return 1
        traceback.print_exc()
        print(f"loom stage {name}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        traceback.print_exc()
        print(f"loom stage {name}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{k}={v:g}" for k, v in list(outcome.metrics.items())[:6])
    print(
        f"loom stage {name}: done in {outcome.seconds:.1f}s (mlflow run {outcome.run_id}) {summary}"
    )
    return 0
