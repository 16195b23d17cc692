"""`loom runs` and `loom compare`: MLflow runs as plain tables, a sweep's grid among them.

A sweep's points are put back together from their runs' tags alone (`tracking.SWEEP_*_TAG`):
each point's pipeline run brings every stage's report (skipped stages' metrics are only
there), its stage runs the metrics they logged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flows import project, tracking
from flows.params import ParamsError

LINEAGE_TAGS = (
    tracking.GIT_COMMIT_TAG,
    tracking.GIT_DIRTY_TAG,
    tracking.COMPONENT_VERSION_TAG,
    tracking.FLOW_RUN_TAG,
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
    query = f"tags.`{tracking.STAGE_TAG}` != ''"
    if stage:
        query = f"tags.`{tracking.STAGE_TAG}` LIKE {filter_string(stage + '%')}"
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
            if r.data.tags[tracking.STAGE_TAG] in (stage,)
            or r.data.tags[tracking.STAGE_TAG].startswith(f"{stage}@")
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
        metrics = {k: v for k, v in run.data.metrics.items() if not tracking.is_wall_clock(k)}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())[:3])
        started = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            [
                run.info.run_id,
                started,
                run.data.tags.get(tracking.STAGE_TAG, "?"),
                run.info.status,
                run.data.tags.get(tracking.GIT_COMMIT_TAG, "")[:10],
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
    prefixes = (tracking.DEP_TAG_PREFIX, tracking.OUT_TAG_PREFIX)
    data_tags = {k for r in runs for k in r.data.tags if k.startswith(prefixes)}
    section("data ", lambda r: r.data.tags, data_tags)
    section("", lambda r: r.data.tags, {tracking.STAGE_TAG, *LINEAGE_TAGS})
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


# ---- a sweep's grid ------------------------------------------------------------------------

_SWEEP_ID = re.compile(r"^[A-Za-z0-9_.-]+$")  # also keeps the MLflow filter string well-formed


@dataclass
class PointRuns:
    """What MLflow holds for one point of a sweep."""

    index: int
    values: dict[str, Any]
    status: str = "-"  # its pipeline run's: FINISHED | FAILED | RUNNING ("-": none recorded)
    parent_run_id: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> metrics
    key_metrics: dict[str, list[str]] = field(default_factory=dict)  # stage -> names
    ran: set[str] = field(default_factory=set)  # stages that ran (not skipped) at this point


def _summary(run: Any) -> list[dict[str, Any]]:
    """The pipeline run's per-stage reports: skipped stages' metrics are only there."""
    import mlflow

    try:
        with tracking.environ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
            data = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/summary.json")
    except Exception:  # no summary: the pipeline run was interrupted
        return []
    return data if isinstance(data, list) else []


def collect(root: Path, sweep_id: str) -> list[PointRuns]:
    """The sweep's points, in grid order, from the MLflow runs tagged with `sweep_id`."""
    import mlflow

    if not _SWEEP_ID.match(sweep_id):
        raise ParamsError(f"sweep id {sweep_id!r}: expected letters, digits, '-', '_' or '.'")
    experiment_id = tracking.setup(root)
    client = mlflow.MlflowClient()
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            f"tags.`{tracking.SWEEP_ID_TAG}` = '{sweep_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    points: dict[int, PointRuns] = {}
    # Pipeline runs first (every stage, from summary.json), then stage runs on top.
    for run in sorted(runs, key=lambda r: r.data.tags.get(tracking.PIPELINE_TAG) != "true"):
        tags = run.data.tags
        if tracking.SWEEP_INDEX_TAG not in tags or tracking.SWEEP_POINT_TAG not in tags:
            continue
        index = int(tags[tracking.SWEEP_INDEX_TAG])
        values = json.loads(tags[tracking.SWEEP_POINT_TAG])
        point = points.setdefault(index, PointRuns(index, values))
        if tags.get(tracking.PIPELINE_TAG) == "true":
            point.status, point.parent_run_id = run.info.status, run.info.run_id
            for report in _summary(run):
                point.metrics[report["stage"]] = dict(report.get("metrics") or {})
                point.key_metrics[report["stage"]] = list(report.get("key_metrics") or [])
        elif tracking.STAGE_TAG in tags:
            stage = tags[tracking.STAGE_TAG]
            point.metrics[stage] = {**point.metrics.get(stage, {}), **run.data.metrics}
            point.ran.add(stage)
    return [points[i] for i in sorted(points)]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _key_metrics(point: PointRuns, stage: str) -> str:
    metrics = point.metrics.get(stage, {})
    names = [k for k in point.key_metrics.get(stage, []) if k in metrics] or [
        k for k in metrics if not tracking.is_wall_clock(k)
    ][:3]
    return ", ".join(f"{k}={_fmt(metrics[k])}" for k in names) or "-"


def format_sweep(
    root: Path, sweep_id: str, metric: str | None = None, descending: bool = False
) -> str:
    """The sweep as a table, one row per point: the swept keys' values, the point's status,
    then either `metric` (one column per stage that logged it, "metric@stage" when several;
    rows sorted by the first, ascending unless `descending`) or, without a metric, the key
    metrics of every stage that ran at some point (rows in grid order)."""
    points = collect(root, sweep_id)
    if not points:
        experiment = tracking.experiment_name()
        return (
            f"no MLflow runs tagged {tracking.SWEEP_ID_TAG}={sweep_id} in experiment {experiment!r}"
        )
    return format_points(sweep_id, points, metric, descending)


def format_points(
    sweep_id: str, points: list[PointRuns], metric: str | None = None, descending: bool = False
) -> str:
    """`format_sweep` for points already collected."""
    keys = list(dict.fromkeys(k for p in points for k in p.values))
    stages = list(dict.fromkeys(s for p in points for s in p.metrics))
    note = ""
    if metric:
        stages = [s for s in stages if any(metric in p.metrics.get(s, {}) for p in points)]
        headers = [metric] if len(stages) == 1 else [f"{metric}@{s}" for s in stages]

        def cells(p: PointRuns) -> list[str]:
            return [
                _fmt(p.metrics[s][metric]) if metric in p.metrics.get(s, {}) else "-"
                for s in stages
            ]

        if stages:
            have = [p for p in points if metric in p.metrics.get(stages[0], {})]
            have.sort(key=lambda p: p.metrics[stages[0]][metric], reverse=descending)
            points = have + [p for p in points if p not in have]
        else:
            logged = sorted({m for p in points for ms in p.metrics.values() for m in ms})
            note = f"\n(no stage of this sweep logged {metric!r}; logged: {', '.join(logged)})"
    else:
        stages = [s for s in stages if any(s in p.ran for p in points)] or stages
        headers = stages

        def cells(p: PointRuns) -> list[str]:
            return [_key_metrics(p, s) for s in stages]

    rows = [["point", *keys, "status", *headers]]
    for p in points:
        rows.append(
            [str(p.index), *(_fmt(p.values.get(k, "-")) for k in keys), p.status, *cells(p)]
        )
    failed = sum(p.status == "FAILED" for p in points)
    title = f"sweep {sweep_id}: {len(points)} point(s) in MLflow, {failed} failed"
    return f"{title}\n{table(rows)}{note}"
