"""`loom runs` and `loom compare` in-process, against the session's real MLflow store."""

from __future__ import annotations

import contextlib
import re
import socket
from types import SimpleNamespace

import mlflow
import pytest

from flows import cli, compare, tracking

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


def test_compare_two_runs(root, capsys):
    ids = stage_runs(root, "bpe@small", "bpe@large")
    assert loom(root, "compare", *ids) == 0
    out = capsys.readouterr().out
    assert "* metric loss" in out.replace("  ", " ") and "bpe@large" in out


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


def test_wall_clock_metrics_stay_out_of_the_key_metrics_shown():
    """Without key metrics of its own, a stage's summary shows its first metrics that are not
    wall-clock figures: `*_per_second` and `*_seconds` stay in MLflow."""
    timed = {"a_per_second": 9.0, "b_seconds": 2.0, "loss": 0.5, "stage_seconds": 3.0}
    point = compare.PointRuns(0, {"x": 1}, "FINISHED", metrics={"s": timed}, ran={"s"})
    (row,) = compare.format_points("sw-1", [point]).splitlines()[3:]
    assert row.split()[-1] == "loss=0.5"
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="r1", start_time=0, status="FINISHED"),
        data=SimpleNamespace(metrics=timed, tags={tracking.STAGE_TAG: "s"}),
    )
    assert compare.format_runs([run]).splitlines()[2].split()[-1] == "loss=0.5"
