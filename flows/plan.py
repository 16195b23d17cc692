"""What a `loom run` has to do, decided by DVC alone (no Prefect, no MLflow imports).

`loom run` asks here first: when every selected stage is unchanged, it reports them skipped
and ends without starting a Prefect flow run (like `dvc repro`, which has nothing to do);
the flow uses the same rule to settle unchanged stages without a task.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from components.config import build, require
from flows import params, project, reports, tracking
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
    with project.dvc_repo(root) as repo:
        return [project.spec_of(repo, s) for s in project.select(repo, list(targets))]


def stages_to_run(root: Path, specs: list[project.StageSpec], force: bool) -> set[str]:
    """Stages DVC sees as changed, and everything downstream of them (whose inputs may
    change when they run): the rest can only be skipped."""
    if force:
        return {s.name for s in specs}
    with project.dvc_repo(root) as repo:
        by_name = {s.addressing: s for s in repo.index.stages}  # dvc.yaml parsed once
        stale = {s.name for s in specs if project.changed(by_name[s.name])}
    todo: set[str] = set()
    for spec in specs:  # topological order
        if spec.name in stale or any(u in todo for u in spec.upstream):
            todo.add(spec.name)
    return todo


def skipped(root: Path, spec: project.StageSpec) -> StageReport:
    return StageReport(spec.name, "skipped", metrics=read_metrics(root, spec))


def read_metrics(root: Path, spec: project.StageSpec) -> dict[str, float]:
    for rel in spec.metrics:
        found = reports.read(root / rel)
        if found:
            return found
    return {}


def key_metrics(report: StageReport) -> list[str]:
    """The metrics a summary shows for a stage: the ones its component names as key metrics,
    else its first three that are not wall-clock figures (a skipped stage names none)."""
    named = [k for k in report.key_metrics if k in report.metrics]
    return named or [k for k in report.metrics if not tracking.is_wall_clock(k)][:3]


def format_summary(reports: list[StageReport]) -> str:
    """A plain table: stage, status, duration, key metrics, MLflow run id."""
    rows = [["stage", "status", "time", "key metrics", "mlflow run"]]
    for r in reports:
        keys = key_metrics(r)
        shown = ", ".join(f"{k}={r.metrics[k]:.4g}" for k in keys)
        secs = f"{r.seconds:.1f}s" if r.status == "ran" else "-"
        rows.append(
            [r.stage, r.status, secs, shown or (r.error[:60] if r.error else "-"), r.run_id or "-"]
        )
    return table(rows)


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def summary_markdown(
    reports: list[StageReport], run_url: Callable[[str], str | None], note: str = ""
) -> str:
    """The summary table in Markdown (a Prefect artifact of the flow run): stage, status,
    seconds, key metrics, and the stage's MLflow run, a link when `run_url(run_id)` gives
    one; `note` (e.g. how to open those links) follows the table."""
    lines = [
        "| stage | status | seconds | key metrics | MLflow run |",
        "|---|---|---:|---|---|",
    ]
    for r in reports:
        shown = ", ".join(f"{k}={r.metrics[k]:.4g}" for k in key_metrics(r))
        if not shown and r.error:
            shown = r.error[:200]
        url = run_url(r.run_id) if r.run_id else None
        run = f"[{r.run_id}]({url})" if url else (f"`{r.run_id}`" if r.run_id else "-")
        secs = f"{r.seconds:.1f}" if r.status == "ran" else "-"
        cells = [f"`{r.stage}`", r.status, secs, _markdown_cell(shown or "-"), run]
        lines.append("| " + " | ".join(cells) + " |")
    counts = {
        s: sum(r.status == s for r in reports) for s in ("ran", "skipped", "failed", "not run")
    }
    shown_counts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines += ["", f"{len(reports)} stage(s): {shown_counts or 'none'}."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


@dataclass
class Orchestration:
    """The `loom` section of params.yaml (read by the flow only; no stage depends on it).

    retries: attempts after a failure, for every stage; stage_retries overrides it per stage
    or per foreach/matrix group ("bpe" covers "bpe@small").
    """

    retries: int = 0
    retry_delay_seconds: float = 2.0
    stage_retries: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.retries >= 0, "retries", self.retries, "an int >= 0")
        require(
            self.retry_delay_seconds >= 0, "retry_delay_seconds", self.retry_delay_seconds, ">= 0"
        )
        for name, n in self.stage_retries.items():
            require(n >= 0, f"stage_retries.{name}", n, "an int >= 0")

    def retries_for(self, stage: str) -> int:
        for key in (stage, stage.split("@")[0]):
            if key in self.stage_retries:
                return self.stage_retries[key]
        return self.retries


def orchestration(all_params: dict) -> Orchestration:
    return build(
        Orchestration, all_params.get(params.LOOM_SECTION), where=f"{params.PARAMS_FILE}: loom"
    )


def check_params(root: Path, candidate: str) -> None:
    """Raise unless params.yaml text `candidate` is one the whole pipeline can run with: every
    stage name dvc.yaml resolves from it is plain (foreach/matrix keys end up in commands),
    every component stage's config builds from its section, and the `loom` section builds.

    DVC resolves dvc.yaml against the candidate in a scratch copy of the project's
    declaration files, so params.yaml itself is written only once it has passed.
    """
    with tempfile.TemporaryDirectory(prefix="loom-params-") as tmp:
        scratch = Path(tmp)
        for entry in Path(root).iterdir():  # dvc.yaml and what it may read (vars, params)
            if entry.is_file() and entry.suffix in (".yaml", ".yml", ".json", ".toml"):
                if entry.name not in ("dvc.lock", params.PARAMS_FILE):
                    shutil.copy2(entry, scratch / entry.name)
        (scratch / params.PARAMS_FILE).write_text(candidate, encoding="utf-8")
        (scratch / ".dvc").mkdir()
        (scratch / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
        orchestration(params.load(scratch))
        validate_specs(scratch, select_specs(scratch, []))


def validate_specs(root: Path, specs: list[project.StageSpec]) -> dict[str, dict]:
    """Every stage's commands (runnable without a shell) and every component stage's config
    and I/O binding, before any stage runs; returns each config's identity (runtime knobs
    left out, as work dirs are keyed) by stage."""
    from components.config import identity
    from flows import stage_runner  # imports the component registry

    configs = {}
    for spec in specs:
        for command in spec.commands:
            project.command_argv(spec, command)
        if spec.component:
            configs[spec.name] = identity(stage_runner.prepare(root, spec.name, spec)[2])
    return configs


def apply_params(root: Path, params_files: list[str], overrides: list[str]) -> list[str]:
    """Merge overlays (`-P`) then `KEY=VALUE` overrides (`-S`) into params.yaml, after
    `check_params` passed on the result; on any failure the file is left byte for byte as it
    was. Returns the overrides applied."""
    overlays = [o for f in params_files for o in params.overlay_overrides(root, Path(root) / f)]
    found = overlays + list(overrides)
    if found:
        params.apply_overrides(root, found, check=lambda text: check_params(root, text))
    return found
