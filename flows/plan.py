"""What a `loom run` has to do, decided by DVC alone (no Prefect, no MLflow imports).

`loom run` asks here first: when every selected stage is unchanged, it reports them skipped
and ends without starting a Prefect flow run (like `dvc repro`, which has nothing to do);
the flow uses the same rule to settle unchanged stages without a task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flows import project
from flows.compare import table


@dataclass
class StageReport:
    stage: str
    status: str  # ran | skipped | failed | not run
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    error: str = ""
    key_metrics: list[str] = field(default_factory=list)


def select_specs(root: Path, targets: list[str]) -> list[project.StageSpec]:
    """The stages `dvc repro TARGETS` would consider, in its order, with their upstream."""
    with project.DVC_LOCK:
        repo = project.open_repo(root)
        try:
            return [project.spec_of(repo, s) for s in project.select(repo, list(targets))]
        finally:
            repo.close()


def stages_to_run(root: Path, specs: list[project.StageSpec], force: bool) -> set[str]:
    """Stages DVC sees as changed, and everything downstream of them (whose inputs may
    change when they run): the rest can only be skipped."""
    if force:
        return {s.name for s in specs}
    with project.DVC_LOCK:
        repo = project.open_repo(root)
        try:
            by_name = {s.addressing: s for s in repo.index.stages}  # dvc.yaml parsed once
            stale = {s.name for s in specs if project.changed(by_name[s.name])}
        finally:
            repo.close()
    todo: set[str] = set()
    for spec in specs:  # topological order
        if spec.name in stale or any(u in todo for u in spec.upstream):
            todo.add(spec.name)
    return todo


def skipped(root: Path, spec: project.StageSpec) -> StageReport:
    return StageReport(spec.name, "skipped", metrics=read_metrics(root, spec))


def read_metrics(root: Path, spec: project.StageSpec) -> dict[str, float]:
    for rel in spec.metrics:
        try:
            data = json.loads((root / rel).read_text())
        except (OSError, ValueError):
            continue
        return {k: v for k, v in data.items() if isinstance(v, (int, float))}
    return {}


def format_summary(reports: list[StageReport]) -> str:
    """A plain table: stage, status, duration, key metrics, MLflow run id."""
    rows = [["stage", "status", "time", "key metrics", "mlflow run"]]
    for r in reports:
        keys = [k for k in r.key_metrics if k in r.metrics] or [
            k for k in r.metrics if not k.endswith("seconds")
        ][:3]
        shown = ", ".join(f"{k}={r.metrics[k]:.4g}" for k in keys)
        secs = f"{r.seconds:.1f}s" if r.status == "ran" else "-"
        rows.append(
            [r.stage, r.status, secs, shown or (r.error[:60] if r.error else "-"), r.run_id or "-"]
        )
    return table(rows)
