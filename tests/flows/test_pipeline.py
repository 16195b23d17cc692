"""The spine end to end: dvc repro and the Prefect flow run one DAG, with real DVC, Prefect
and MLflow (no mocks), on tiny params."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil

import mlflow
import pytest
import yaml

from flows import cli
from tests.conftest import ALL_STAGES, REPO, dvc, make_project

pytestmark = pytest.mark.slow


def loom_run(root, capsys, *args):
    """`loom run` in-process (it needs the session's Prefect test server)."""
    with contextlib.chdir(root):
        rc = cli.main(["run", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def add_stage(root, stage_yaml: str) -> None:
    """Add a stage (YAML indented under `stages:`) to root's dvc.yaml, first among its stages:
    appending it would put it in whatever section ends the file (top-level `plots:`)."""
    path = root / "dvc.yaml"
    text, count = re.subn(
        r"(?m)^stages:\n",
        lambda m: m.group(0) + stage_yaml.strip("\n") + "\n",
        path.read_text(),
        count=1,
    )
    assert count == 1, f"{path}: no top-level `stages:`"
    path.write_text(text)


def statuses(stdout: str) -> dict[str, str]:
    """stage -> status, parsed from the summary table."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if (
            len(parts) >= 2
            and parts[0] in ALL_STAGES
            and parts[1] in ("ran", "skipped", "failed", "not")
        ):
            found[parts[0]] = parts[1]
    return found


def test_dvc_repro_then_loom_run_skips_everything(project, prefect_server, experiment, capsys):
    assert "up to date" in dvc(project, "status").stdout
    rc, out, err = loom_run(project, capsys)
    assert rc == 0, err
    assert statuses(out) == dict.fromkeys(ALL_STAGES, "skipped")
    # Nothing to do: settled by DVC alone, no Prefect flow run and no MLflow run started.
    assert f"Everything is up to date: {len(ALL_STAGES)} stage(s) unchanged" in out
    assert "Open the MLflow UI" not in out and not mlflow.search_experiments(
        filter_string=f"name = '{experiment}'"
    )


def test_loom_run_writes_the_lock_dvc_repro_writes(
    built_project, tmp_path, prefect_server, experiment, capsys
):
    root = make_project(tmp_path / "proj")
    rc, out, err = loom_run(root, capsys, "--jobs", "2")
    assert rc == 0, err
    assert statuses(out) == dict.fromkeys(ALL_STAGES, "ran")
    assert (root / "dvc.lock").read_text() == (built_project / "dvc.lock").read_text()
    assert "up to date" in dvc(root, "status").stdout
    # Outputs are real: ids decode back to the corpus, metrics files exist.
    metrics = yaml.safe_load((root / "metrics" / "bpe_small.json").read_text())
    assert metrics["bpe"]["vocab_size"] == 300  # nested per component (flows/reports.py)

    rc, out, _ = loom_run(root, capsys)
    assert rc == 0 and statuses(out) == dict.fromkeys(ALL_STAGES, "skipped")


def test_param_change_reruns_only_that_branch(project, prefect_server, experiment, capsys):
    rc, out, err = loom_run(project, capsys, "-S", "bpe.small.vocab_size=333")
    assert rc == 0, err
    ran = {s for s, st in statuses(out).items() if st == "ran"}
    assert ran == {"bpe@small", "tokenize@small", "word2vec@small", "embedding_eval@small"}
    assert (
        yaml.safe_load((project / "params.yaml").read_text())["bpe"]["small"]["vocab_size"] == 333
    )
    assert "up to date" in dvc(project, "status").stdout
    # After the flow, dvc repro agrees nothing is left to do.
    assert "didn't change" in dvc(project, "repro").stdout
    # Back to 300: `loom compare` shows the two bpe@small runs differ in that param...
    rc, out, err = loom_run(
        project, capsys, "-S", "bpe.small.vocab_size=300", "embedding_eval@small"
    )
    assert rc == 0 and statuses(out)["bpe@small"] == "ran", err
    with contextlib.chdir(project):
        assert cli.main(["compare", "--last", "2", "--stage", "bpe@small"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "param vocab_size" in line)
    assert row.startswith("*") and row.split()[-2:] == ["300", "333"]
    same = next(line for line in table.splitlines() if "dep data/corpus" in line)
    assert not same.startswith("*")
    # ... and the two embedding evaluations differ in quality, metric by metric.
    with contextlib.chdir(project):
        assert cli.main(["compare", "--last", "2", "--stage", "embedding_eval@small"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "metric wordsim353_spearman" in line)
    assert row.startswith("*"), table
    first, second = map(float, row.split()[-2:])
    assert -1 <= first <= 1 and -1 <= second <= 1 and first != second


def test_targets_run_with_upstream_only(project, prefect_server, experiment, capsys):
    rc, out, err = loom_run(project, capsys, "--force", "bpe@large")
    assert rc == 0, err
    assert statuses(out) == {"stdlib_text": "ran", "corpus": "ran", "bpe@large": "ran"}


def test_concurrent_run_equals_sequential(
    built_project, tmp_path, prefect_server, experiment, capsys
):
    seq = tmp_path / "seq"
    shutil.copytree(built_project, seq, symlinks=True)
    par = tmp_path / "par"
    shutil.copytree(built_project, par, symlinks=True)
    for root, jobs in ((seq, "1"), (par, "2")):
        rc, out, err = loom_run(
            root, capsys, "--force", "--jobs", jobs, "-S", "bpe.large.vocab_size=400"
        )
        assert rc == 0, err
        assert statuses(out) == dict.fromkeys(ALL_STAGES, "ran")
        assert "Unable to acquire lock" not in out + err
    assert (seq / "dvc.lock").read_text() == (par / "dvc.lock").read_text()


def test_failure_stops_downstream_and_keeps_outputs(project, prefect_server, experiment, capsys):
    lock_before = yaml.safe_load((project / "dvc.lock").read_text())
    tok_before = sorted(p.name for p in (project / "data" / "tokenizers" / "small").iterdir())
    corpus_before = (project / "data" / "corpus" / "train.parquet").read_bytes()
    # Every document filtered out: the corpus stage must fail with its own message.
    rc, out, err = loom_run(project, capsys, "-S", "corpus.min_chars=100000000")
    assert rc == 1
    assert "stage 'corpus' failed" in err and "corpus" in err
    st = statuses(out)
    assert st["stdlib_text"] == "skipped" and st["corpus"] == "failed"
    assert all(st[s] == "not" for s in ALL_STAGES[2:])  # "not run"
    lock_after = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock_after["stages"]["corpus"] == lock_before["stages"]["corpus"]
    assert (
        sorted(p.name for p in (project / "data" / "tokenizers" / "small").iterdir()) == tok_before
    )
    assert (project / "data" / "corpus" / "train.parquet").read_bytes() == corpus_before


FLAKY_STAGE = """
  flaky:
    cmd: >-
      python -c "import pathlib, sys; tried = pathlib.Path('attempted');
      first = not tried.exists(); tried.touch();
      first and print('flaky: error: transient');
      first or pathlib.Path('flaky.txt').write_text('ok');
      sys.exit(1 if first else 0)"
    outs:
      - flaky.txt
"""


@pytest.mark.parametrize(("retries", "expected"), [(0, "failed"), (1, "ran")])
def test_retries_are_configured_per_stage_in_params(
    project, prefect_server, experiment, capsys, retries, expected
):
    add_stage(project, FLAKY_STAGE)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["loom"]["stage_retries"] = {"flaky": retries}
    params["loom"]["retry_delay_seconds"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    rc, out, err = loom_run(project, capsys, "flaky")
    assert (rc == 0) == (expected == "ran"), err
    assert (
        next(line for line in out.splitlines() if line.startswith("flaky")).split()[1] == expected
    )
    assert (project / "flaky.txt").exists() == (expected == "ran")


def test_config_errors_stop_the_flow_before_any_stage(project, prefect_server, experiment, capsys):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tokenize"]["bogus"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    rc, out, err = loom_run(project, capsys, "--force")
    assert rc == 1 and "tokenize.bogus" in err
    assert statuses(out) == {}  # no stage ran, not even the valid upstream ones


def test_every_stage_run_carries_lineage(tmp_path, prefect_server, experiment, capsys):
    root = make_project(tmp_path / "proj")
    rc, out, err = loom_run(root, capsys)
    assert rc == 0, err
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("loom.pipeline") == "true"]
    stages = {r.data.tags["loom.stage"]: r for r in runs if "loom.stage" in r.data.tags}
    assert len(parents) == 1 and set(stages) == set(ALL_STAGES)
    flow_run_id = parents[0].data.tags["prefect.flow_run_id"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    head = os.popen(f"git -C {root} rev-parse HEAD").read().strip()
    for name, run in stages.items():
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["prefect.flow_run_id"] == flow_run_id
        assert tags["loom.git.commit"] == head and tags["loom.git.dirty"] in ("true", "false")
        assert tags["loom.component"].startswith("text.") and tags["loom.component_version"]
        assert tags["loom.host"] and tags["loom.device"] == "cpu"
        # DVC digests in MLflow equal the ones in dvc.lock, for every dep and out.
        for entry in lock[name].get("deps", []) + lock[name]["outs"]:
            kind = "dep" if entry in lock[name].get("deps", []) else "out"
            assert tags[f"dvc.{kind}.{entry['path']}"] == entry["md5"], (name, entry["path"])
        assert run.data.params, name
        assert "stage_seconds" in run.data.metrics
    corpus = stages["corpus"]
    assert {i.dataset.name for i in corpus.inputs.dataset_inputs} >= {"sources", "corpus"}
    curve = client.get_metric_history(stages["bpe@small"].info.run_id, "merge_count")
    assert len(curve) > 10 and curve[0].value >= curve[-1].value
    # `loom runs` lists them, newest first, with their MLflow ids.
    with contextlib.chdir(root):
        assert cli.main(["runs", "--last", str(len(ALL_STAGES))]) == 0
    listed = capsys.readouterr().out.splitlines()[2:]
    assert {line.split()[0] for line in listed} == {r.info.run_id for r in stages.values()}


INJECTED = (
    '{"small": {"vocab_size": 300}, "large": {"vocab_size": 420}, '
    '"x;echo PWNED>pwned.txt;#": {"vocab_size": 300}}'
)


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_params_key_cannot_inject_a_command(project, prefect_server, experiment, capsys):
    """`-S` (and a deployment's `overrides`) can set foreach keys, which end up in stage
    commands: a key that is not a plain identifier is refused before anything runs."""
    before = sha256(project / "params.yaml")
    rc, out, err = loom_run(project, capsys, "-S", f"bpe={INJECTED}", "bpe")
    assert rc == 1
    assert "foreach/matrix key 'x;echo PWNED>pwned.txt;#'" in err and "not a plain" in err
    assert not (project / "pwned.txt").exists()
    assert sha256(project / "params.yaml") == before
    # A deployment run passes the same through the flow's `overrides` parameter.
    from flows import pipeline
    from flows import project as project_module

    with pytest.raises(project_module.ProjectError, match="not a plain identifier"):
        pipeline.pipeline(root=str(project), targets=["bpe"], overrides=[f"bpe={INJECTED}"])
    assert not (project / "pwned.txt").exists()
    assert sha256(project / "params.yaml") == before
    # Written into params.yaml by hand, `loom stage` (what `dvc repro` runs) refuses it too.
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["bpe"] = yaml.safe_load(INJECTED)
    (project / "params.yaml").write_text(yaml.safe_dump(data))
    with contextlib.chdir(project):
        assert cli.main(["stage", "bpe@small"]) == 1
    assert "not a plain identifier" in capsys.readouterr().err


def test_stage_commands_run_without_a_shell(project, prefect_server, experiment, capsys):
    from flows import project as project_module

    spec = project_module.StageSpec("s", "", project, None, None)
    argv = project_module.command_argv
    assert argv(spec, "loom stage bpe@small") == ["loom", "stage", "bpe@small"]
    assert argv(spec, "python -c 'a; b'") == ["python", "-c", "a; b"]
    for cmd in ("loom stage x;echo hi", "a && b", "a | b", "a > f", "echo $HOME", "a `b`", "#"):
        with pytest.raises(project_module.ProjectError, match="without a shell"):
            argv(spec, cmd)
    # In a real run: a stage whose cmd needs a shell fails with that message, nothing runs.
    add_stage(
        project, "  shelly:\n    cmd: touch shelled.txt && echo done\n    outs:\n      - x.txt\n"
    )
    rc, out, err = loom_run(project, capsys, "shelly")
    assert rc == 1 and "without a shell" in err and not (project / "shelled.txt").exists()


def test_a_rejected_value_leaves_params_yaml_byte_identical(
    project, prefect_server, experiment, capsys
):
    (project / "params.yaml").write_text(
        (REPO / "params.yaml")
        .read_text()  # the real file: comments, nulls, quoting
        .replace("vocab_size: 1024", "vocab_size: 300")
        .replace("vocab_size: 4096", "vocab_size: 420")
    )
    before = sha256(project / "params.yaml")
    for bad in ("bpe.small.vocab_size=abc", "word2vec.mode=glove", "loom.retries=-1"):
        rc, out, err = loom_run(project, capsys, "-S", bad)
        assert rc == 1, bad
        assert bad.split("=")[0].split(".", 1)[1] in err.splitlines()[-1], err
        assert sha256(project / "params.yaml") == before, bad
    # A good value changes that value and nothing else of the file.
    text = (project / "params.yaml").read_text()
    rc, out, err = loom_run(project, capsys, "-S", "bpe.small.vocab_size=301", "bpe@small")
    assert rc == 0, err
    assert (project / "params.yaml").read_text() == text.replace(
        "vocab_size: 300", "vocab_size: 301", 1
    )


NO_HASH_YET = "No file hash info found for"  # DVC's warning for an output dvc.lock lacks


def objects(directory) -> int:
    """Files in a DVC cache or remote (one per object, `.dir` listings included)."""
    return sum(len(files) for _, _, files in os.walk(directory))


def fresh_clone(project, dst, lock: bool):
    """What a worker starts from: the project's files, no DVC cache, no outputs (and, with
    `lock` False, no dvc.lock: a commit whose stages never ran)."""
    shutil.copytree(
        project,
        dst,
        symlinks=True,
        ignore=shutil.ignore_patterns("cache", "tmp", "data", "metrics", "plots", "reports"),
    )
    if not lock:
        (dst / "dvc.lock").unlink()
    return dst


def test_dvc_pull_and_push_report_file_counts(
    project, tmp_path, prefect_server, experiment, capsys, caplog, monkeypatch
):
    """`project.push` / `project.pull` return how many files moved (DVC's pull returns a
    dict: it used to be printed whole as "N file(s) fetched"); the flow says so in words that
    read right; a fresh clone's outputs that dvc.lock does not list yet pull without DVC's
    "No file hash info found" warning for each."""
    from flows import pipeline
    from flows import project as project_module

    remote = tmp_path / "remote"
    monkeypatch.setenv(project_module.REMOTE_ENV, str(remote))
    pushed = project_module.push(project, [])
    assert pushed == objects(remote) > 20
    assert project_module.push(project, []) == 0  # all there already

    # A clone whose stages never ran: nothing to fetch, and no warning per output.
    bare = fresh_clone(project, tmp_path / "bare", lock=False)
    with caplog.at_level(logging.WARNING):
        assert project_module.pull(bare, []) == 0
    assert not [r for r in caplog.records if NO_HASH_YET in r.getMessage()]
    assert NO_HASH_YET not in capsys.readouterr().err
    # Only while pulling: the DVC loggers carry no filter of Loom's afterwards.
    assert not logging.getLogger("dvc_data.index.checkout").filters

    # A worker's flow run on a clone with dvc.lock: pull fetches every object pushed, every
    # stage is then unchanged, and the final push finds everything on the remote.
    worker = fresh_clone(project, tmp_path / "worker", lock=True)
    with contextlib.chdir(worker):  # a worker runs its flow in its clone
        pipeline.pipeline(root=str(worker), pull=True, push=True)
    out = capsys.readouterr().out
    assert f"dvc pull: {pushed} file(s) fetched; what the remote lacks, the stages make" in out
    assert "dvc push: every output is on the remote (0 more uploaded)" in out
    assert objects(worker / ".dvc" / "cache") == pushed
    assert statuses(out) == dict.fromkeys(ALL_STAGES, "skipped")
