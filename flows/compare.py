"""`loom runs` and `loom compare`: MLflow runs as tables (rich) or JSON, a sweep's grid among
them.

Tables are `rich.table.Table`s. On a terminal rich fits them to its width, with colour; written
anywhere else (a pipe, a file, a test's capture) they are plain text as wide as they need, one
row per line, never wrapped or cut, so `grep` and `awk` read them. `--json` gives the same
runs as data (`run_record`): full ids and digests, every param and metric.

A sweep's points are put back together from their runs' tags alone (`tracking.SWEEP_*_TAG`):
each point's pipeline run brings every stage's report (skipped stages' metrics are only
there), its stage runs the metrics they logged.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from flows import project, tracking
from flows.params import ParamsError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

# The tags `loom compare` sets side by side (a row only where some run has the tag): what
# made the run (code, component, device) and what happened to it; pids and the like differ
# in every run and say nothing.
COMPARED_TAGS = (
    tracking.COMPONENT_VERSION_TAG,
    tracking.GIT_COMMIT_TAG,
    tracking.GIT_DIRTY_TAG,
    tracking.DEVICE_TAG,
    tracking.HOST_TAG,
    tracking.FLOW_RUN_TAG,
    tracking.RESUMED_FROM_TAG,
    tracking.ERROR_TAG,
)
# What `get_run` answers for an id that names no run: unknown, or not an id at all ("a b").
_NO_SUCH_RUN = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
RUN_ID_LENGTH = 32  # MLflow run ids: uuid4 hex
MIN_PREFIX = 6  # shortest run-id prefix `loom compare` resolves (16M values: rarely ambiguous)
_HEX = re.compile(r"[0-9a-f]+")
SHORT = 12  # hex digits of an id or digest shown in a table (the full ones are in --json)
FALLBACK_KEY_METRICS = 3  # shown for a run whose stage named no key metrics
WIDE = 100_000  # a non-terminal Console's width: wide enough that no row ever wraps


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


def get_runs(root: Path, run_ids: list[str]) -> list[Any]:
    """The runs these ids name, in order: a full id, or a unique prefix of at least
    `MIN_PREFIX` hex digits of a run in the project's experiment (as `loom runs` lists them).
    CompareError names the first id that names no run, or more than one."""
    client = _client(root)
    return [_resolve(client, ref) for ref in run_ids]


def _resolve(client: Any, ref: str) -> Any:
    from mlflow.exceptions import MlflowException

    wanted = ref.lower()
    if _HEX.fullmatch(wanted) and MIN_PREFIX <= len(wanted) < RUN_ID_LENGTH:
        return _by_prefix(client, ref, wanted)
    try:
        return client.get_run(wanted if _HEX.fullmatch(wanted) else ref)
    except MlflowException as err:
        if err.error_code not in _NO_SUCH_RUN:
            raise
    if _HEX.fullmatch(wanted) and len(wanted) < MIN_PREFIX:
        raise CompareError(
            f"no MLflow run with id {ref!r} (a run id prefix needs at least {MIN_PREFIX} hex "
            "digits)"
        )
    raise CompareError(f"no MLflow run with id {ref!r}")


def _by_prefix(client: Any, ref: str, prefix: str) -> Any:
    """The one run of the project's experiment whose id starts with `prefix` (hex only, so
    no LIKE wildcard in it)."""
    from mlflow.exceptions import MlflowException

    name = tracking.experiment_name()
    exp = client.get_experiment_by_name(name)
    found = []
    if exp is not None:
        try:
            found = client.search_runs(
                [exp.experiment_id],
                f"attributes.run_id LIKE '{prefix}%'",
                max_results=6,
                order_by=["attributes.start_time DESC"],
            )
        except MlflowException as err:  # a server whose search has no LIKE on run ids
            raise CompareError(
                f"run id prefix {ref!r}: the tracking server cannot search runs by id prefix "
                f"({err.message.splitlines()[0]}); give the full run id"
            ) from None
    if not found:
        raise CompareError(f"no MLflow run with id starting {ref!r} in experiment {name!r}")
    if len(found) > 1:
        shown = ", ".join(r.info.run_id[:SHORT] for r in found[:5])
        more = ", ..." if len(found) > 5 else ""
        raise CompareError(
            f"run id prefix {ref!r} is ambiguous: {len(found)}{'+' if more else ''} runs start "
            f"with it ({shown}{more}); give more of the id"
        )
    return found[0]


# ---- runs as data ------------------------------------------------------------------------


def key_metric_names(run: Any) -> list[str]:
    """The metrics a summary shows for `run`: those its stage names in the
    `tracking.KEY_METRICS_TAG` tag (a JSON list) that it logged; for a run without the tag
    (made before it existed) or without any of them, its first few metrics by name that are
    not wall-clock figures (`tracking.is_wall_clock`: they differ run to run)."""
    metrics = run.data.metrics
    try:
        declared = json.loads(run.data.tags.get(tracking.KEY_METRICS_TAG) or "[]")
    except ValueError:  # a hand-edited tag: fall back as for an old run
        declared = []
    if not isinstance(declared, list):
        declared = []
    names = [n for n in declared if isinstance(n, str) and n in metrics]
    if names:
        return names
    return [k for k in sorted(metrics) if not tracking.is_wall_clock(k)][:FALLBACK_KEY_METRICS]


def _iso(millis: int | None) -> str | None:
    """MLflow's epoch milliseconds as ISO 8601 in UTC (None stays None: a running run's end)."""
    if millis is None:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity (`jq` refuses them): a diverged metric becomes null."""
    return value if math.isfinite(value) else None


def run_record(run: Any) -> dict[str, Any]:
    """One run as `--json` gives it: ids, stage, status, UTC times, key metrics (name ->
    value, see `key_metric_names`), every param and metric, the DVC md5 of every dep and out
    (path -> md5), and Loom's and Prefect's tags (`loom.*`, `prefect.*`)."""
    info, data = run.info, run.data
    tags = data.tags
    seconds = None
    if info.end_time is not None and info.start_time is not None:
        seconds = round((info.end_time - info.start_time) / 1000, 3)
    own = (tracking.STAGE_TAG, tracking.KEY_METRICS_TAG)  # top-level fields already
    return {
        "run_id": info.run_id,
        "run_name": getattr(info, "run_name", None),
        "stage": tags.get(tracking.STAGE_TAG),
        "status": info.status,
        "start_time": _iso(info.start_time),
        "end_time": _iso(info.end_time),
        "duration_seconds": seconds,
        "key_metrics": {k: _finite(data.metrics[k]) for k in key_metric_names(run)},
        "params": dict(sorted(data.params.items())),
        "metrics": {k: _finite(v) for k, v in sorted(data.metrics.items())},
        "deps": _data_tags(tags, tracking.DEP_TAG_PREFIX),
        "outs": _data_tags(tags, tracking.OUT_TAG_PREFIX),
        "tags": {
            k: v
            for k, v in sorted(tags.items())
            if k.startswith(("loom.", "prefect.")) and k not in own
        },
    }


def _data_tags(tags: dict[str, str], prefix: str) -> dict[str, str]:
    return {k.removeprefix(prefix): v for k, v in sorted(tags.items()) if k.startswith(prefix)}


@dataclass
class Group:
    """Runs compared with one another: those of one stage, or the runs a user named."""

    stage: str | None  # None: the runs named are of several stages
    runs: list[Any]
    newest_first: bool = True  # False: in the order a user named them


def by_stage(runs: list[Any]) -> list[Group]:
    """`runs` (newest first) grouped by stage: the groups in the order of their newest run,
    each group's runs newest first."""
    groups: dict[str, Group] = {}
    for run in runs:
        stage = run.data.tags.get(tracking.STAGE_TAG, "?")
        groups.setdefault(stage, Group(stage, [])).runs.append(run)
    return list(groups.values())


def named(runs: list[Any]) -> Group:
    """The runs a user named, compared as one group whatever their stages."""
    stages = {r.data.tags.get(tracking.STAGE_TAG) for r in runs}
    return Group(stages.pop() if len(stages) == 1 else None, runs, newest_first=False)


# One row of a comparison: section (a key of `run_record`, or "run"), key, value per run.
Row = tuple[str, str, list[Any]]
_LABELS = {"params": "param", "metrics": "metric", "deps": "dep", "outs": "out", "tags": ""}
_RUN_LABELS = {"start_time": "started", "duration_seconds": "time"}


def comparison_rows(records: list[dict[str, Any]]) -> list[Row]:
    """What `loom compare` sets side by side, section by section: the run (stage, status,
    start, duration), params, metrics, DVC deps and outs, then `COMPARED_TAGS`. A key only
    some runs have is a row with None for the others."""
    rows: list[Row] = [
        ("run", key, [r[key] for r in records])
        for key in ("stage", "status", "start_time", "duration_seconds")
    ]
    for section in ("params", "metrics", "deps", "outs"):
        keys = sorted({k for r in records for k in r[section]})
        rows += [(section, k, [r[section].get(k) for r in records]) for k in keys]
    for tag in COMPARED_TAGS:
        values = [r["tags"].get(tag) for r in records]
        if any(v is not None for v in values):
            rows.append(("tags", tag, values))
    return rows


def differs(row: Row) -> bool:
    """Whether the runs disagree on `row`. Wall-clock figures (start, duration, metrics
    `tracking.is_wall_clock` names) are never marked: they differ between any two runs,
    even of the same inputs, so a mark on them would say nothing."""
    section, key, values = row
    if section == "run" and key in ("start_time", "duration_seconds"):
        return False
    if section == "metrics" and tracking.is_wall_clock(key):
        return False
    return len({json.dumps(v, sort_keys=True) for v in values}) > 1


def comparison_record(group: Group) -> dict[str, Any]:
    """A group as `compare --json` gives it: the stage (null when the runs named are of
    several), the runs (`run_record`), and per section the keys the runs disagree on."""
    records = [run_record(r) for r in group.runs]
    disagree: dict[str, list[str]] = {}
    for row in comparison_rows(records):
        if differs(row):
            disagree.setdefault(row[0], []).append(row[1])
    return {"stage": group.stage, "runs": records, "differs": disagree}


# ---- runs as tables ----------------------------------------------------------------------


def new_table(*headers: str, title: str | None = None) -> Table:
    """An empty table in Loom's one style: a rule under the header, no frame, columns two
    spaces apart, left-aligned; cells are plain text (no rich markup in a value)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
        title=Text(title) if title else None,
        title_justify="left",
        title_style="bold",
    )
    for header in headers:
        table.add_column(Text(header))
    return table


def add_row(
    table: Table, cells: list[str], style: str | None = None, end_section: bool = False
) -> None:
    """A row of plain-text cells: `[x]` in a value is text, not rich markup."""
    from rich.text import Text

    table.add_row(*(Text(c) for c in cells), style=style, end_section=end_section)


def render(*renderables: RenderableType) -> str:
    """`renderables` as plain text, as `show` writes them anywhere but a terminal: no colour,
    as wide as the widest row, trailing spaces stripped."""
    from rich.console import Console

    out = io.StringIO()
    console = Console(
        file=out,
        width=WIDE,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        force_interactive=False,
        highlight=False,
        soft_wrap=False,
    )
    for renderable in renderables:  # one after another, not side by side on a line
        console.print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


def show(renderables: list[RenderableType], file: IO[str] | None = None) -> None:
    """Print `renderables` to `file` (default stdout): on a terminal through rich's own
    Console (its width, colour unless NO_COLOR), elsewhere as `render` makes them."""
    out = file or sys.stdout
    if out.isatty():
        from rich.console import Console

        console = Console(file=out, highlight=False)
        for renderable in renderables:
            console.print(renderable)
    else:
        print(render(*renderables), file=out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _started(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _duration(run: Any) -> str:
    if run.info.end_time is None:
        return "-"
    return f"{(run.info.end_time - run.info.start_time) / 1000:.1f}s"


def runs_table(runs: list[Any]) -> Table:
    """`loom runs`: one row per run, newest first; the run id in full (what `compare`, the
    MLflow UI and `mlflow` commands take), the stage's key metrics last."""
    table = new_table("run id", "started", "stage", "status", "time", "commit", "key metrics")
    for run in runs:
        metrics = run.data.metrics
        shown = ", ".join(f"{k}={_fmt(metrics[k])}" for k in key_metric_names(run))
        status = run.info.status
        add_row(
            table,
            [
                run.info.run_id,
                _started(run.info.start_time),
                run.data.tags.get(tracking.STAGE_TAG, "?"),
                status,
                _duration(run),
                run.data.tags.get(tracking.GIT_COMMIT_TAG, "")[:10],
                shown or "-",
            ],
            style={"FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan"}.get(status),
        )
    return table


def format_runs(runs: list[Any]) -> str:
    """`runs_table` as plain text (what `loom runs` prints to a pipe)."""
    if not runs:
        return "no stage runs recorded yet"
    return render(runs_table(runs))


def _cell(section: str, key: str, value: Any) -> str:
    if value is None:
        return "-"
    if section in ("deps", "outs") or key in (tracking.GIT_COMMIT_TAG, tracking.FLOW_RUN_TAG):
        return str(value)[:SHORT]  # a digest or id: its head tells them apart (full in --json)
    if key == "start_time":  # ISO UTC in the record; local time, as `loom runs`, here
        return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if key == "duration_seconds":
        return f"{value:.1f}s"
    return _fmt(value)


def comparison_table(
    records: list[dict[str, Any]], only_differences: bool = False, title: str | None = None
) -> Table:
    """Runs (`run_record`s) side by side: a row per `comparison_rows` entry (a blank line
    between sections), a column per run (its id's first `SHORT` digits), `*` where the runs
    disagree; with `only_differences`, those rows only (and the run section)."""
    table = new_table("", "key", *(r["run_id"][:SHORT] for r in records), title=title)
    rows = [
        row
        for row in comparison_rows(records)
        if not only_differences or row[0] == "run" or differs(row)
    ]
    for i, row in enumerate(rows):
        section, key, values = row
        if section == "run":
            label = _RUN_LABELS.get(key, key)
        else:
            label = f"{_LABELS[section]} {key}".lstrip()
        mark = differs(row)
        add_row(
            table,
            ["*" if mark else "", label, *(_cell(section, key, v) for v in values)],
            style="bold yellow" if mark else None,
            end_section=i + 1 == len(rows) or rows[i + 1][0] != section,
        )
    return table


def format_compare(runs: list[Any], only_differences: bool = False) -> str:
    """The runs named, side by side, as plain text (`compare_view` of one group)."""
    if not runs:
        return "no runs to compare"
    return render(*compare_view([named(runs)], only_differences))


def compare_view(groups: list[Group], only_differences: bool = False) -> list[RenderableType]:
    """What `loom compare` prints: a table per group of two or more runs, titled with its
    stage, and a line when they agree on everything that is not a wall-clock figure; then
    one line naming the stages that had a single run (nothing to compare it with), then the
    legend."""
    out: list[RenderableType] = []
    for group in groups:
        if len(group.runs) < 2:
            continue
        records = [run_record(r) for r in group.runs]
        order = "newest first" if group.newest_first else "in the order given"
        title = f"{group.stage or 'several stages'}: {len(records)} runs, {order}"
        out.append(comparison_table(records, only_differences, title))
        if not any(differs(row) for row in comparison_rows(records)):
            out.append(
                _plain(
                    "the runs agree on every param, metric, data version and tag (wall-clock "
                    "figures aside)"
                )
            )
        out.append(_plain(""))
    single = [g for g in groups if len(g.runs) == 1]
    if single:
        listed = ", ".join(f"{g.stage} ({g.runs[0].info.run_id[:SHORT]})" for g in single)
        out.append(_plain(f"one run only, not compared: {listed}"))
    out.append(_plain("(* = differs between runs)"))
    return out


def _plain(text: str) -> Any:
    from rich.text import Text

    return Text(text)


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns, a rule under the header row (plain text, for summaries printed
    while a flow logs: `plan.format_summary`)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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

    grid = new_table("point", *keys, "status", *headers)
    for p in points:
        add_row(
            grid,
            [str(p.index), *(_fmt(p.values.get(k, "-")) for k in keys), p.status, *cells(p)],
            style="red" if p.status == "FAILED" else None,
        )
    failed = sum(p.status == "FAILED" for p in points)
    title = f"sweep {sweep_id}: {len(points)} point(s) in MLflow, {failed} failed"
    # The title as a line of its own, then the grid: the layout `loom sweep` has always
    # printed (title, header, rule, a row per point), which scripts read.
    return f"{title}\n{render(grid)}{note}"
