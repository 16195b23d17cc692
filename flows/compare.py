"""`loom runs` and `loom compare`: MLflow stage runs as plain tables."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from flows import project, tracking

LINEAGE_TAGS = (
    "loom.git.commit",
    "loom.git.dirty",
    "loom.component_version",
    "prefect.flow_run_id",
)
# What `get_run` answers for an id that names no run: unknown, or not an id at all ("a b").
_NO_SUCH_RUN = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class CompareError(ValueError):
    """A run id or stage name that selects no runs."""


def check_stage(stage: str) -> str:
    """`stage` if it is a stage name (see `project.STAGE_NAME`), else CompareError."""
    if not project.STAGE_NAME.fullmatch(stage):
        raise CompareError(
            f'--stage "{stage}": not a stage name (expected NAME or NAME@KEY, each of '
            f"letters, digits and _ . -)"
        )
    return stage


def filter_string(value: str) -> str:
    """`value` as a string literal in an MLflow search filter.

    MLflow's filter grammar (3.17, `SearchUtils._strip_quotes`) has no escapes: it drops the
    outer quotes and keeps the rest verbatim, so `'x''y'` means x''y. A value can only be
    quoted with a quote it does not hold; validating it (`check_stage`) is the real defense.
    """
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise CompareError(f"{value!r}: holds both quote characters; no MLflow filter can match it")


def _client(root: Path) -> Any:
    """A client of the project's store, after runs left RUNNING by dead processes are ended
    (so what `runs` and `compare` show is what is true)."""
    import mlflow

    tracking.end_stale_runs(tracking.setup(root))
    return mlflow.MlflowClient()


def recent_runs(root: Path, last: int = 20, stage: str | None = None) -> list[Any]:
    """Most recent stage runs (pipeline parent runs excluded), newest first."""
    if stage is not None:
        check_stage(stage)
    client = _client(root)
    exp = client.get_experiment_by_name(tracking.experiment_name())
    if exp is None:
        return []
    # A stage ("bpe@small") or a foreach/matrix group ("bpe"); MLflow search has no OR.
    # LIKE's `_` matches any character; the exact match on the stage tag follows below.
    query = "tags.`loom.stage` != ''"
    if stage:
        query = f"tags.`loom.stage` LIKE {filter_string(stage + '%')}"
    runs = client.search_runs(
        [exp.experiment_id],
        query,
        max_results=max(last * 4, 100),
        order_by=["attributes.start_time DESC"],
    )
    if stage:
        runs = [
            r
            for r in runs
            if r.data.tags["loom.stage"] in (stage,)
            or r.data.tags["loom.stage"].startswith(f"{stage}@")
        ]
    return runs[:last]


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns, a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_runs(runs: list[Any]) -> str:
    if not runs:
        return "no stage runs recorded yet"
    rows = [["run id", "started", "stage", "status", "commit", "key metrics"]]
    for run in runs:
        metrics = {k: v for k, v in run.data.metrics.items() if k != "stage_seconds"}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())[:3])
        started = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            [
                run.info.run_id,
                started,
                run.data.tags.get("loom.stage", "?"),
                run.info.status,
                run.data.tags.get("loom.git.commit", "")[:10],
                shown,
            ]
        )
    return table(rows)


def compare_rows(runs: list[Any]) -> list[tuple[str, list[str], bool]]:
    """(label, value per run, differs) for params, metrics, data versions and lineage tags."""
    out: list[tuple[str, list[str], bool]] = []

    def section(prefix: str, getter: Any, keys: set[str]) -> None:
        for key in sorted(keys):
            values = [getter(run).get(key) for run in runs]
            shown = [
                "-" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
                for v in values
            ]
            out.append((f"{prefix}{key}", shown, len(set(shown)) > 1))

    section("param ", lambda r: r.data.params, {k for r in runs for k in r.data.params})
    section("metric ", lambda r: r.data.metrics, {k for r in runs for k in r.data.metrics})
    data_tags = {k for r in runs for k in r.data.tags if k.startswith("dvc.")}
    section("data ", lambda r: r.data.tags, data_tags)
    section("", lambda r: r.data.tags, {"loom.stage", *LINEAGE_TAGS})
    return out


def format_compare(runs: list[Any]) -> str:
    if not runs:
        return "no runs to compare"
    header = ["", "key", *[r.info.run_id[:12] for r in runs]]
    rows = [header] + [
        ["*" if differs else "", label, *values] for label, values, differs in compare_rows(runs)
    ]
    return table(rows) + "\n(* = differs between runs)"


def get_runs(root: Path, run_ids: list[str]) -> list[Any]:
    """The runs with these ids, in order; CompareError names the first id without a run."""
    from mlflow.exceptions import MlflowException

    client = _client(root)
    runs = []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except MlflowException as err:
            if err.error_code not in _NO_SUCH_RUN:
                raise
            raise CompareError(f"no MLflow run with id {run_id!r}") from None
    return runs
