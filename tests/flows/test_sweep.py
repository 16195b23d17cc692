"""`loom sweep`: one pipeline flow run per point of a params grid, each in its own git worktree
sharing the project's DVC cache; real git, DVC, Prefect and MLflow. Pool mode needs a worker,
so only its wiring is tested (run_deployment replaced)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path

import mlflow
import pytest

from flows import cli, compare, sweep
from flows.params import ParamsError
from tests.conftest import dvc, git

pytestmark = pytest.mark.slow


# ---- the grid ------------------------------------------------------------------------------


def test_grid_is_the_product_with_the_last_key_varying_fastest():
    assert sweep.parse_grid(["a=1,2", "b=x,y,z"]) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 1, "b": "z"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 2, "b": "z"},
    ]


def test_grid_values_parse_as_yaml():
    (point,) = sweep.parse_grid(["i=3", "f=0.5", "b=true", "n=null", "s=abc", "q='1,2'"])
    assert point == {"i": 3, "f": 0.5, "b": True, "n": None, "s": "abc", "q": "1,2"}
    lists = sweep.parse_grid(["t=[a,b],[]", "m={x: 1}"])
    assert [p["t"] for p in lists] == [["a", "b"], []] and lists[0]["m"] == {"x": 1}
    # Overrides round-trip through YAML with their types.
    assert sweep.overrides_of({"a.b": 0.5, "c": "x", "d": [1]}) == ["a.b=0.5", 'c="x"', "d=[1]"]


def test_a_single_value_is_a_fixed_override():
    assert sweep.parse_grid(["a=1", "b=2,3"]) == [{"a": 1, "b": 2}, {"a": 1, "b": 3}]


@pytest.mark.parametrize(
    ("specs", "problem"),
    [
        ([], "at least one"),
        (["novalue"], "expected KEY=V1,V2"),
        (["=1,2"], "expected KEY=V1,V2"),
        (["a="], "expected KEY=V1,V2"),
        (["a=1,,2"], "empty value"),
        (["a=1,2", "a=3"], "given twice"),
        (["a=1,1"], "given twice"),
        (["a=[1,2"], "not valid YAML"),
    ],
)
def test_malformed_specs_are_errors_naming_the_spec(specs, problem):
    with pytest.raises(ParamsError, match=problem) as err:
        sweep.parse_grid(specs)
    if specs:
        assert repr(specs[-1]) in str(err.value)


def test_keys_must_exist_in_the_committed_params(project):
    head = git(project, "rev-parse", "HEAD").strip()
    committed = sweep.params_at(project, head)
    sweep.check_keys(committed, ["bpe.small.vocab_size", "tokenize.batch_size"])
    with pytest.raises(ParamsError, match="bpe.small.vocab_sz"):
        sweep.check_keys(committed, ["bpe.small.vocab_sz"])
    with pytest.raises(ParamsError, match="no 'medium'"):
        sweep.check_keys(committed, ["bpe.medium.vocab_size"])
    # The flow checks before any worktree exists.
    with pytest.raises(ParamsError, match="vocab_sz"):
        sweep.run_sweep(["bpe.small.vocab_sz=1,2"], root=str(project))
    assert not (project / ".loom").exists()


def test_uncommitted_names_what_a_sweep_leaves_out(project):
    # make_project committed the sources; `dvc repro` left dvc.lock untracked.
    assert [f.split()[0] for f in sweep.uncommitted(project)] == ["dvc.lock"]
    git(project, "add", "-A")
    git(project, "commit", "-qm", "lock")
    assert sweep.uncommitted(project) == []
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "\n# edited\n")
    assert sweep.uncommitted(project) == ["params.yaml"]


# ---- a local sweep, end to end -------------------------------------------------------------


def loom_sweep(root: Path, capsys, *argv: str) -> tuple[int, str, str]:
    """`loom sweep ...` in-process, through the subcommand `register_sweep` adds."""
    parser = argparse.ArgumentParser(prog="loom")
    cli.register_sweep(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *argv])
    with contextlib.chdir(root):
        rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of params.yaml, dvc.lock and every file under data/, metrics/ and plots/."""
    files = [root / "params.yaml", root / "dvc.lock"]
    for top in ("data", "metrics", "plots"):
        files += [p for p in (root / top).rglob("*") if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def commit_everything(root: Path, remote: Path) -> None:
    """dvc.lock (and the metrics DVC does not cache) committed, as a real project has them;
    a private DVC remote, set in the local config (which the worktrees inherit)."""
    git(root, "add", "-A")
    git(root, "commit", "-qm", "dvc repro")
    dvc(root, "remote", "modify", "--local", "local", "url", str(remote))


def sweep_id_of(stdout: str) -> str:
    return stdout.split("loom compare --sweep ")[-1].split()[0]


def test_sweep_runs_every_point_in_its_own_worktree(
    project, tmp_path, prefect_server, experiment, capsys
):
    remote = tmp_path / "remote"
    commit_everything(project, remote)
    before = snapshot(project)
    rc, out, err = loom_sweep(
        project,
        capsys,
        "-S",
        "bpe.small.vocab_size=300,320",
        "-S",
        "tokenize.batch_size=256,512",
        "tokenize@small",
        "--max-parallel",
        "2",
    )
    assert rc == 0, err
    assert "4 of 4 point(s) succeeded" in out
    sweep_id = sweep_id_of(out)

    # The main workspace is untouched and no worktree is left.
    assert snapshot(project) == before
    assert len(git(project, "worktree", "list").splitlines()) == 1
    assert not (project / ".loom" / "sweeps" / sweep_id).exists()

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`loom.sweep_id` = '{sweep_id}'")
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    parents = [r for r in runs if r.data.tags.get("loom.pipeline") == "true"]
    stage_runs = [r for r in runs if "loom.stage" in r.data.tags]
    assert len(parents) == 4
    points = {r.data.tags["loom.sweep_point"] for r in stage_runs}
    assert len(points) == 4
    # tokenize@small ran at every point with its batch size; bpe@small only where the
    # vocab size differs from the committed 300 (elsewhere its output came from the cache).
    tokenize = [r for r in stage_runs if r.data.tags["loom.stage"] == "tokenize@small"]
    bpe = [r for r in stage_runs if r.data.tags["loom.stage"] == "bpe@small"]
    assert {r.data.tags["loom.stage"] for r in stage_runs} == {"tokenize@small", "bpe@small"}
    assert len(tokenize) == 4 and len(bpe) == 2
    for run in tokenize:
        point = json.loads(run.data.tags["loom.sweep_point"])
        assert run.data.params["batch_size"] == str(point["tokenize.batch_size"])
    assert {r.data.params["vocab_size"] for r in bpe} == {"320"}
    # What each point made was pushed to the DVC remote.
    for run in tokenize + bpe:
        for key, md5 in run.data.tags.items():
            if key.startswith("dvc.out.data/"):
                assert (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file(), key

    # The grid, sorted by a metric only tokenize logs...
    table = compare.format_sweep(project, sweep_id, "bytes_per_token").splitlines()
    assert table[1].split() == [
        "point",
        "bpe.small.vocab_size",
        "tokenize.batch_size",
        "status",
        "bytes_per_token",
    ]
    rows = [line.split() for line in table[3:]]
    assert len(rows) == 4 and {r[3] for r in rows} == {"FINISHED"}
    values = [float(r[4]) for r in rows]
    assert values == sorted(values) and values[0] < values[-1]
    assert [r[1] for r in rows] == ["300", "300", "320", "320"]  # more merges, longer tokens
    descending = compare.format_sweep(project, sweep_id, "bytes_per_token", descending=True)
    assert [float(line.split()[4]) for line in descending.splitlines()[3:]] == values[::-1]
    # ...by one both stages log (a column each; a skipped bpe@small's value from the summary)...
    table = compare.format_sweep(project, sweep_id, "vocab_size").splitlines()
    assert table[1].split()[-2:] == ["vocab_size@bpe@small", "vocab_size@tokenize@small"]
    assert all(r.split()[1] == r.split()[4] == r.split()[5] for r in table[3:])
    # ...and without a metric: the key metrics of the stages that ran, in grid order.
    table = compare.format_sweep(project, sweep_id).splitlines()
    assert "bpe@small" in table[1] and "tokenize@small" in table[1]
    assert [line.split()[0] for line in table[3:]] == ["0", "1", "2", "3"]
    # `loom compare --sweep ID` prints the same table.
    with contextlib.chdir(project):
        assert cli.compare_sweep(argparse.Namespace(sweep=sweep_id, metric=None)) == 0
    assert capsys.readouterr().out.strip() == "\n".join(table)


def test_a_failing_point_fails_the_sweep_not_its_siblings(
    project, tmp_path, prefect_server, experiment, capsys
):
    commit_everything(project, tmp_path / "remote")
    before = snapshot(project)
    # vocab_size 5 is below the 256 byte tokens: that point's config check fails.
    rc, out, err = loom_sweep(project, capsys, "-S", "bpe.small.vocab_size=300,5", "bpe@small")
    assert rc == 1
    assert "1 of 2 point(s) succeeded" in out
    assert 'point 1 {"bpe.small.vocab_size": 5} failed' in err
    assert "bpe.small.vocab_size = 5: expected an int >= 257" in err
    assert snapshot(project) == before
    assert len(git(project, "worktree", "list").splitlines()) == 1


# ---- pool mode -----------------------------------------------------------------------------


def test_pool_mode_needs_an_existing_deployment(project, prefect_server, experiment):
    with pytest.raises(sweep.SweepError, match="no Prefect deployment 'loom-pipeline/nope'"):
        sweep.sweep(
            ["tokenize.batch_size=256,512"], root=str(project), pool_deployment="loom-pipeline/nope"
        )


def test_pool_mode_asks_the_deployment_for_one_run_per_point(
    project, prefect_server, experiment, monkeypatch
):
    """Without a worker, only the wiring: what each flow run of the deployment is asked."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed

    asked = []

    def run_deployment(name, parameters, timeout, flow_run_name):
        asked.append((name, parameters, timeout, flow_run_name))
        return FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name=flow_run_name, state=Completed())

    monkeypatch.setattr("prefect.deployments.run_deployment", run_deployment)
    monkeypatch.setattr(sweep, "_check_deployment", lambda name, commit, logger: None)
    result = sweep.sweep(
        ["bpe.small.vocab_size=300,320"], root=str(project), pool_deployment="loom-pipeline/x"
    )
    assert [p["status"] for p in result["points"]] == ["succeeded", "succeeded"]
    assert sorted(a[3] for a in asked) == [f"{result['sweep_id']}-0", f"{result['sweep_id']}-1"]
    name, parameters, timeout, _ = min(asked, key=lambda a: a[3])
    assert name == "loom-pipeline/x" and timeout is None
    assert parameters == {
        "overrides": ["bpe.small.vocab_size=300"],
        "tags": {
            "loom.sweep_id": result["sweep_id"],
            "loom.sweep_index": "0",
            "loom.sweep_point": '{"bpe.small.vocab_size": 300}',
        },
        "pull": True,
        "push": True,  # no targets: the deployment's own
    }
    assert not (project / ".loom").exists()  # no worktrees in pool mode
