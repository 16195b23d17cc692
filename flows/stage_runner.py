"""`loom stage NAME`: the one entry point every dvc.yaml stage calls.

Order matters: everything that can be checked is checked before any work (params, config,
I/O binding, inputs present, tracking reachable); outputs are staged and swapped in only on
success; the MLflow run records the outcome either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import registry
from components.config import build, to_dict
from components.stage import Dataset, Stage, StageInputError, StageIO
from flows import atomic, params, project, tracking

RUN_INFO_ENV = "LOOM_RUN_INFO"  # where `loom run` asks the stage to leave its run id + metrics
WORK_DIR_ENV = "LOOM_WORK_DIR"  # stable base directory for stages' resumable work dirs


@dataclass
class Outcome:
    run_id: str
    metrics: dict[str, float]
    seconds: float


def bind(spec: project.StageSpec, stage: Stage) -> None:
    """meta.inputs/outputs must name exactly the component's inputs/outputs, and be declared
    in deps/outs, or DVC would not track what the component really reads and writes."""
    for kind, have, want, declared, field in (
        ("inputs", spec.inputs, stage.inputs, spec.deps, "deps"),
        ("outputs", spec.outputs, stage.outputs, spec.outs, "outs"),
    ):
        if set(have) != set(want):
            raise project.ProjectError(
                f"dvc.yaml: stage {spec.name!r}: meta.{kind} names {sorted(have)}, but component "
                f"{stage.name!r} expects {sorted(want)}"
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
    config = build(stage.config, section, where=f"{params.PARAMS_FILE}: {spec.config_key}")
    bind(spec, stage)
    return spec, stage, config


def run_stage(root: Path, name: str) -> Outcome:
    import mlflow

    spec, stage, config = prepare(root, name)
    inputs = {role: root / p for role, p in spec.inputs.items()}
    for role, path in inputs.items():
        if not path.exists():
            raise StageInputError(f"stage {name!r}: input {role!r} not found: {path}")
    experiment_id = tracking.setup(root)

    tags = {
        "loom.stage": name,
        "loom.component": stage.name,
        "loom.component_version": stage.version,
        "loom.cmd": spec.cmd,
        **{f"loom.{k}": v for k, v in tracking.git_info(root).items()},
        **{f"loom.{k}": v for k, v in tracking.host_info().items()},
    }
    known = project.digests(root, spec.deps)  # DVC md5 by path: tags and datasets share it
    tags.update({f"dvc.dep.{p}": d for p, d in known.items()})
    tags.update(tracking.extra_tags())
    if os.environ.get(tracking.FLOW_RUN_ENV):
        tags["prefect.flow_run_id"] = os.environ[tracking.FLOW_RUN_ENV]
    parent = os.environ.get(tracking.PARENT_RUN_ENV) or None

    client = mlflow.MlflowClient()
    started = time.time()
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=name, parent_run_id=parent, tags=tags
    ) as run:
        run_id = run.info.run_id
        resolved = to_dict(config)
        mlflow.log_params(tracking.flatten(resolved))
        mlflow.log_dict(resolved, "config.json")
        for role, path in inputs.items():
            _log_dataset(root, role, path, "input", known)

        targets = {role: root / p for role, p in spec.outputs.items()}
        work = work_dir(root, name, resolved, known)
        try:
            with atomic.staged_outputs(targets) as scratch:
                result = stage.run(config, StageIO(inputs=inputs, outputs=scratch, work=work))
                moved = {str(scratch[r]): str(targets[r]) for r in targets}
        except BaseException as err:
            mlflow.set_tag("loom.error", f"{type(err).__name__}: {err}"[:5000])
            raise
        _remove_work_dir(root, work)
        seconds = time.time() - started
        metrics = {k: float(v) for k, v in result.metrics.items()}
        metrics["stage_seconds"] = round(seconds, 3)
        write_reports(root, spec, metrics, result.curves)

        out_digests = project.digests(root, spec.outs + spec.metrics + spec.plots)
        mlflow.set_tags({f"dvc.out.{p}": d for p, d in out_digests.items()})
        known.update(out_digests)
        mlflow.log_metrics(metrics)
        tracking.log_curves(client, run_id, result.curves)
        for path in [*(root / m for m in spec.metrics + spec.plots), *result.artifacts]:
            path = Path(_relocate(str(path), moved))
            if path.is_file():
                mlflow.log_artifact(str(path))
        for role, path in targets.items():
            _log_dataset(root, role, path, "output", known)
        for ds in result.datasets:
            ds_path = Path(_relocate(str(ds.path), moved))
            _log_dataset(root, ds.name, ds_path, ds.context, known, ds)

    outcome = Outcome(run_id=run_id, metrics=metrics, seconds=seconds)
    if os.environ.get(RUN_INFO_ENV):
        atomic.write_json(Path(os.environ[RUN_INFO_ENV]), outcome.__dict__)
    return outcome


def work_dir(root: Path, name: str, config: dict, deps: dict[str, str]) -> Path:
    """The stage's resumable work directory: keyed by stage, config and dependency digests, so
    a rerun after a kill finds its checkpoints and a changed stage never resumes stale ones.
    Under $LOOM_WORK_DIR when set (a worker's stable disk: each deployment run clones afresh),
    else `.loom/work/` in the project."""
    key = json.dumps([name, config, deps], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = Path(os.environ.get(WORK_DIR_ENV) or root / ".loom" / "work")
    return base / f"{name.replace('@', '-')}-{digest}"  # the component creates it if needed


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


def _relocate(path: str, moved: dict[str, str]) -> str:
    """A path the component returned inside a scratch output, mapped to its final place."""
    for tmp, final in moved.items():
        if path == tmp or path.startswith(tmp + os.sep):
            return final + path[len(tmp) :]
    return path


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
        source = resolve_dataset_source(str(path.resolve()))
    dataset = MetaDataset(source=source, name=name, digest=digest[:36] or None)
    tags = {"dvc.md5": digest, "path": rel}
    if ds is not None and ds.num_rows is not None:
        tags["num_rows"] = str(ds.num_rows)
    tracking.log_input(dataset, context, tags)


def is_wall_clock(metric: str) -> bool:
    return metric.endswith(("_seconds", "_per_second")) or metric == "seconds"


def write_reports(
    root: Path,
    spec: project.StageSpec,
    metrics: dict[str, float],
    curves: dict[str, list[tuple[int, float]]],
) -> None:
    """The stage's declared DVC metrics (JSON/YAML) and plots (JSON records by step) files.

    Wall-clock metrics (`*_seconds`, `*_per_second`) go to MLflow only: the DVC metrics file
    is a versioned output, and the same inputs must give the same bytes (and the same
    dvc.lock).
    """
    metrics = {k: v for k, v in metrics.items() if not is_wall_clock(k)}
    for rel in spec.metrics:
        target = root / rel
        if target.suffix in (".yaml", ".yml"):
            import yaml

            atomic.write_text(target, yaml.safe_dump(metrics, sort_keys=True))
        else:
            atomic.write_json(target, metrics)
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
    """CLI body of `loom stage NAME`: exit 0 on success, 1 with a one-line reason on failure."""
    try:
        root = project.find_root()
        outcome = run_stage(root, name)
    except KNOWN_ERRORS as err:
        print(f"loom stage {name}: error: {err}", file=sys.stderr)
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
