"""`loom runs` and `loom compare` in-process, against the session's real MLflow store: runs
made by really running stages on the tiny project, and runs made with MLflow's client where a
test needs a shape no stage makes (an old run without key metrics, a colliding id prefix)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from datetime import datetime
from pathlib import Path

import mlflow
import pytest
import yaml

from flows import cli, compare, tracking
from tests.conftest import loom as loom_subprocess
from tests.conftest import make_project

MLFLOW_LOG = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [A-Z]+ mlflow[.\w]*: ")


@pytest.fixture
def root(tmp_path, monkeypatch, experiment):
    """A bare DVC project (only `.dvc/`): enough for commands that read MLflow only."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def loom(root, *argv: str) -> int:
    with contextlib.chdir(root):
        return cli.main(list(argv))


def error_lines(err: str) -> list[str]:
    """stderr's lines, less MLflow's own log records (it logs creating a fresh store)."""
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if not MLFLOW_LOG.match(line)]


def stage_runs(root, *stages: str) -> list[str]:
    """One finished run per stage, tagged as the stage runner tags them; their ids."""
    client = mlflow.MlflowClient()
    exp_id = tracking.setup(root)
    ids = []
    for stage in stages:
        run = client.create_run(exp_id, tags={"loom.stage": stage})
        client.log_metric(run.info.run_id, "loss", 1.0 + len(ids))
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return ids


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("bogus", ["xyz", "0" * 32, "a b", "../x"])
def test_compare_unknown_run_id(root, capsys, bogus):
    (real,) = stage_runs(root, "corpus")
    assert loom(root, "compare", real, bogus) == 1
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [f"loom compare: error: no MLflow run with id {bogus!r}"]
    assert captured.out == ""


def table_rows(out: str) -> dict[str, tuple[bool, list[str]]]:
    """label -> (marked `*`, cells) for every row of the `loom compare` tables in `out`
    (columns are two or more spaces apart; titles and notes are one cell and left out)."""
    found = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.lstrip("*").strip())
        if len(cells) > 1:
            found[cells[0]] = (line.startswith("*"), cells[1:])
    return found


def test_compare_two_runs(root, capsys):
    ids = stage_runs(root, "bpe@small", "bpe@large")
    assert loom(root, "compare", *ids) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["key"] == (False, [i[: compare.SHORT] for i in ids])
    assert rows["metric loss"] == (True, ["1", "2"])
    assert rows["stage"] == (True, ["bpe@small", "bpe@large"])
    assert rows["status"] == (False, ["FINISHED", "FINISHED"])


@pytest.mark.parametrize("argv", [["runs"], ["compare", "--last", "2"], ["compare", "a", "b"]])
def test_tracking_server_down(root, capsys, monkeypatch, argv):
    port = closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://loom:hunter2@127.0.0.1:{port}")
    assert loom(root, *argv) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"loom {argv[0]}: error: MLflow tracking server ")
    assert f"http://loom:***@127.0.0.1:{port} is unreachable" in line
    assert "hunter2" not in line


def test_runs_filters_by_stage_and_group(root, capsys):
    stage_runs(root, "corpus", "bpe@small", "bpe@large", "bpe_x", "bpex")
    assert loom(root, "runs", "--stage", "bpe") == 0
    out = capsys.readouterr().out
    assert "bpe@small" in out and "bpe@large" in out
    assert "corpus" not in out and "bpe_x" not in out and "bpex" not in out
    assert loom(root, "runs", "--stage", "bpe@small") == 0
    out = capsys.readouterr().out
    assert "bpe@small" in out and "bpe@large" not in out


@pytest.mark.parametrize("stage", ["x'", 'x"', "x' OR tags.a != '", "bpe%", "a@b@c", "", "a b"])
@pytest.mark.parametrize("command", ["runs", "compare"])
def test_stage_that_is_not_a_stage_name(root, capsys, command, stage):
    stage_runs(root, "corpus")
    assert loom(root, command, "--stage", stage) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(
        f'loom {command}: error: --stage "{stage}": not a stage name (expected NAME or NAME@KEY'
    )


@pytest.mark.parametrize("last", ["0", "-1", "two"])
@pytest.mark.parametrize("command", ["runs", "compare"])
def test_last_must_be_at_least_one(root, capsys, command, last):
    with pytest.raises(SystemExit) as info:
        loom(root, command, "--last", last)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"loom {command}: error: argument --last: expected an integer >= 1" in err


def test_wall_clock_metrics_stay_out_of_the_key_metrics_shown(root, capsys):
    """Without key metrics of its own (a run from before `loom.key_metrics`, or a sweep
    point's summary), a summary shows the first metrics by name that are not wall-clock
    figures: `*_per_second` and `*_seconds` stay in MLflow."""
    timed = {"a_per_second": 9.0, "b_seconds": 2.0, "loss": 0.5, "stage_seconds": 3.0}
    point = compare.PointRuns(0, {"x": 1}, "FINISHED", metrics={"s": timed}, ran={"s"})
    (row,) = compare.format_points("sw-1", [point]).splitlines()[3:]
    assert row.split()[-1] == "loss=0.5"
    client = mlflow.MlflowClient()
    run = client.create_run(tracking.setup(root), tags={tracking.STAGE_TAG: "s"})
    for name, value in timed.items():
        client.log_metric(run.info.run_id, name, value)
    client.set_terminated(run.info.run_id)
    assert loom(root, "runs") == 0
    (line,) = capsys.readouterr().out.splitlines()[2:]
    assert re.split(r"\s{2,}", line)[-1] == "loss=0.5"


def runs_json(root, capsys, *argv: str) -> list[dict]:
    assert loom(root, "runs", "--json", *argv) == 0
    return json.loads(capsys.readouterr().out)


def test_key_metrics_come_from_the_tag_with_a_fallback_for_old_runs(root, capsys):
    client = mlflow.MlflowClient()
    exp_id = tracking.setup(root)
    metrics = {"zeta": 1.0, "alpha": 2.0, "beta_seconds": 3.0, "rate_per_second": 4.0}
    metrics |= {"delta": 5.0, "epsilon": float("nan")}
    tags = {
        "old": None,  # made before stages carried the tag
        "tagged": '["zeta", "not_logged", "beta_seconds"]',  # the component's choice, kept
        "garbled": "not json",  # a hand-edited tag reads as no tag
        "empty": "[]",  # a component that names none
    }
    for stage, tag in tags.items():
        extra = {} if tag is None else {tracking.KEY_METRICS_TAG: tag}
        run = client.create_run(exp_id, tags={tracking.STAGE_TAG: stage, **extra})
        for name, value in metrics.items():
            client.log_metric(run.info.run_id, name, value)
        client.set_terminated(run.info.run_id)
    records = {r["stage"]: r for r in runs_json(root, capsys)}
    fallback = {"alpha": 2.0, "delta": 5.0, "epsilon": None}  # by name; NaN is JSON null
    assert records["old"]["key_metrics"] == fallback
    assert records["tagged"]["key_metrics"] == {"zeta": 1.0, "beta_seconds": 3.0}
    assert records["garbled"]["key_metrics"] == fallback
    assert records["empty"]["key_metrics"] == fallback
    assert records["old"]["metrics"] == {**metrics, "epsilon": None}
    assert loom(root, "runs", "--stage", "tagged") == 0
    (line,) = capsys.readouterr().out.splitlines()[2:]
    assert line.endswith("   zeta=1, beta_seconds=3")


def test_compare_run_id_prefixes(root, capsys, experiment):
    ids = stage_runs(root, "bpe@small", "bpe@small")
    assert loom(root, "compare", ids[0][:6], ids[1][:9].upper()) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["key"][1] == [i[: compare.SHORT] for i in ids]
    taken = {i[:6] for i in ids}
    unknown = next(p for p in ("abcdef", "fedcba", "012345") if p not in taken)
    for ref, line in (
        (unknown, f"no MLflow run with id starting {unknown!r} in experiment {experiment!r}"),
        ("abc12", "no MLflow run with id 'abc12' (a run id prefix needs at least 6 hex digits)"),
    ):
        assert loom(root, "compare", ids[0], ref) == 1
        captured = capsys.readouterr()
        (got,) = error_lines(captured.err)
        assert got.startswith(f"loom compare: error: {line}"), got
        assert captured.out == ""


def test_an_ambiguous_prefix_is_named_with_the_runs_it_starts(root, capsys, monkeypatch):
    """Seventeen runs: two of them share a first hex digit (pigeonhole), so with prefixes of
    one digit allowed the shared digit names several runs."""
    ids = stage_runs(root, *["corpus"] * 17)
    monkeypatch.setattr(compare, "MIN_PREFIX", 1)
    digit = next(d for d in "0123456789abcdef" if sum(i.startswith(d) for i in ids) > 1)
    sharing = [i for i in ids if i.startswith(digit)]
    assert loom(root, "compare", digit, ids[0]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"loom compare: error: run id prefix {digit!r} is ambiguous: ")
    assert line.endswith("; give more of the id")
    for run_id in sharing[:5]:
        assert run_id[: compare.SHORT] in line


def test_runs_of_different_stages_are_not_compared(root, capsys):
    stage_runs(root, "corpus", "bpe@small")
    assert loom(root, "compare", "--last", "2") == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        "loom compare: error: the last 2 stage runs are of 2 different stages (bpe@small, "
        "corpus): nothing to compare; give --stage NAME, a larger --last, or RUN_IDs"
    )
    assert loom(root, "compare", "--last", "2", "abcdef") == 2


def test_tables_neither_wrap_nor_cut_nor_read_markup(root, capsys):
    """Written to a pipe, a row is one line however long, and `[bold]` in a value is text."""
    ids = stage_runs(root, "corpus", "corpus")
    long = "[bold]" + "x" * 300 + "[/bold]"
    client = mlflow.MlflowClient()
    for run_id, value in zip(ids, (long, "short"), strict=True):
        client.log_param(run_id, "pattern", value)
    assert loom(root, "compare", *ids) == 0
    out = capsys.readouterr().out
    assert table_rows(out)["param pattern"] == (True, [long, "short"])
    assert max(len(line) for line in out.splitlines()) > 300


# ---- stages that really ran --------------------------------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Path, str]:
    """A tiny project on which `loom stage` really ran stdlib_text, corpus, then bpe@small
    twice (vocab_size 300, then 320), tracked in an experiment of their own: (root, name)."""
    name = f"test-compare-history-{os.getpid()}"
    env = {**os.environ, tracking.EXPERIMENT_ENV: name}
    env.pop("DVC_ROOT", None)
    root = make_project(tmp_path_factory.mktemp("history") / "proj")
    for stage in ("stdlib_text", "corpus", "bpe@small", "bpe@small"):
        if stage == "bpe@small" and (root / "metrics" / "bpe_small.json").exists():
            data = yaml.safe_load((root / "params.yaml").read_text())
            data["bpe"]["small"]["vocab_size"] = 320
            (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        res = loom_subprocess(root, "stage", stage, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
    return root, name


@pytest.fixture
def ran(history, monkeypatch) -> Path:
    root, name = history
    monkeypatch.setenv(tracking.EXPERIMENT_ENV, name)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return root


def test_runs_json_lists_real_stage_runs(ran, capsys):
    records = runs_json(ran, capsys)
    assert [r["stage"] for r in records] == ["bpe@small", "bpe@small", "corpus", "stdlib_text"]
    starts = [datetime.fromisoformat(r["start_time"]) for r in records]
    assert starts == sorted(starts, reverse=True)  # newest first
    client = mlflow.MlflowClient()
    for record in records:
        run = client.get_run(record["run_id"])
        declared = json.loads(run.data.tags[tracking.KEY_METRICS_TAG])
        assert declared and list(record["key_metrics"]) == declared
        assert record["key_metrics"] == {k: run.data.metrics[k] for k in declared}
        assert record["status"] == "FINISHED" and record["duration_seconds"] > 0
        assert record["params"] == run.data.params
        assert record["tags"][tracking.GIT_COMMIT_TAG] == run.data.tags[tracking.GIT_COMMIT_TAG]
    newer, older = records[0], records[1]
    assert (newer["params"]["vocab_size"], older["params"]["vocab_size"]) == ("320", "300")
    assert (newer["key_metrics"]["vocab_size"], older["key_metrics"]["vocab_size"]) == (320, 300)
    assert newer["deps"]["data/corpus"] == older["deps"]["data/corpus"]
    small = "data/tokenizers/small"
    assert newer["outs"][small] != older["outs"][small]
    assert newer["outs"][small].endswith(".dir")  # DVC's md5 of a directory, in full


def test_runs_table_shows_each_runs_key_metrics(ran, capsys):
    records = runs_json(ran, capsys)
    assert loom(ran, "runs") == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "run id",
        "started",
        "stage",
        "status",
        "time",
        "commit",
        "key metrics",
    ]
    assert len(lines) == 2 + len(records)  # one line per run: nothing wrapped
    for line, record in zip(lines[2:], records, strict=True):
        cells = re.split(r"\s{2,}", line)
        assert cells[0] == record["run_id"]
        assert cells[2:4] == [record["stage"], "FINISHED"]
        shown = ", ".join(f"{k}={v:.6g}" for k, v in record["key_metrics"].items())
        assert cells[-1] == shown
    assert "vocab_size=320" in lines[2] and "vocab_size=300" in lines[3]


def test_compare_two_real_runs_by_prefix(ran, capsys):
    newer, older = [r["run_id"] for r in runs_json(ran, capsys, "--stage", "bpe@small")]
    assert loom(ran, "compare", older[:6], newer[:8]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bpe@small: 2 runs, in the order given\n")
    rows = table_rows(out)
    assert rows["key"][1] == [older[: compare.SHORT], newer[: compare.SHORT]]
    assert rows["param vocab_size"] == (True, ["300", "320"])
    assert rows["metric vocab_size"] == (True, ["300", "320"])
    assert rows["out data/tokenizers/small"][0]
    assert rows["stage"] == (False, ["bpe@small", "bpe@small"])
    assert not rows["dep data/corpus"][0]  # the same corpus went into both
    assert not rows["metric stage_seconds"][0]  # wall-clock figures are never marked
    assert rows[tracking.GIT_COMMIT_TAG][1][0] == rows[tracking.GIT_COMMIT_TAG][1][1]
    assert out.rstrip().endswith("(* = differs between runs)")

    assert loom(ran, "compare", "--json", older[:6], newer) == 0
    (group,) = json.loads(capsys.readouterr().out)
    assert group["stage"] == "bpe@small"
    assert [r["run_id"] for r in group["runs"]] == [older, newer]
    assert group["differs"]["params"] == ["vocab_size"]
    assert "vocab_size" in group["differs"]["metrics"]
    assert not [m for m in group["differs"]["metrics"] if tracking.is_wall_clock(m)]
    assert "deps" not in group["differs"] and "run" not in group["differs"]
    assert "data/tokenizers/small" in group["differs"]["outs"]


def test_compare_last_groups_runs_by_stage(ran, capsys):
    records = runs_json(ran, capsys)
    assert loom(ran, "compare", "--last", "4") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "bpe@small: 2 runs, newest first"
    assert out[-2] == (
        f"one run only, not compared: corpus ({records[2]['run_id'][: compare.SHORT]}), "
        f"stdlib_text ({records[3]['run_id'][: compare.SHORT]})"
    )
    assert loom(ran, "compare", "--last", "4", "--json") == 0
    groups = json.loads(capsys.readouterr().out)
    assert [(g["stage"], len(g["runs"])) for g in groups] == [
        ("bpe@small", 2),
        ("corpus", 1),
        ("stdlib_text", 1),
    ]
    assert [r["run_id"] for g in groups for r in g["runs"]] == [r["run_id"] for r in records]

    # --diff: the run section, then only what differs.
    assert loom(ran, "compare", "--last", "4", "--diff") == 0
    rows = table_rows(capsys.readouterr().out)
    shown = {label for label in rows if label not in ("key", "stage", "status", "started", "time")}
    assert "param vocab_size" in shown and all(rows[label][0] for label in shown)
    assert not [label for label in shown if label.startswith("dep ")]
