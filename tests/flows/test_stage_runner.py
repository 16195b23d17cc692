"""`loom stage NAME` on bad input: a clear message, a non-zero exit, and the last good
outputs left exactly as they were."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from flows import atomic
from tests.conftest import loom

pytestmark = pytest.mark.slow


def snapshot(root: Path) -> dict[str, str]:
    """Content hash of every file under data/ and metrics/ (what a failure must not touch)."""
    files = [p for d in ("data", "metrics") for p in (root / d).rglob("*") if p.is_file()]
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def edit_params(root: Path, change) -> None:
    data = yaml.safe_load((root / "params.yaml").read_text())
    change(data)
    (root / "params.yaml").write_text(yaml.safe_dump(data))


def fails(root: Path, stage: str, *needles: str) -> str:
    before = snapshot(root)
    res = loom(root, "stage", stage)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"loom stage {stage}: error:"), res.stderr
    for needle in needles:
        assert needle in last, (needle, last)
    assert snapshot(root) == before
    return last


def test_unknown_param_key(project, experiment):
    edit_params(project, lambda p: p["corpus"].update(val_fraktion=0.2))
    fails(project, "corpus", "corpus.val_fraktion", "0.2", "one of the keys", "val_fraction")


def test_wrong_type(project, experiment):
    edit_params(project, lambda p: p["bpe"]["small"].update(vocab_size="big"))
    fails(project, "bpe@small", "bpe.small.vocab_size", "'big'", "expected int")


def test_vocab_size_below_bytes_plus_specials(project, experiment):
    edit_params(project, lambda p: p["bpe"]["small"].update(vocab_size=256))
    fails(project, "bpe@small", "bpe.small.vocab_size", "256", "257")


def test_malformed_params_yaml(project, experiment):
    path = project / "params.yaml"
    path.write_text(path.read_text() + "corpus: [unclosed\n")
    fails(project, "corpus", "params.yaml", "line", "malformed YAML")


def test_missing_input(project, experiment):
    import shutil

    shutil.rmtree(project / "data" / "tokenizers" / "small")
    fails(project, "tokenize@small", "input 'tokenizer' not found", "data/tokenizers/small")


def test_empty_corpus(project, experiment):
    raw = project / "data" / "raw" / "stdlib"
    for f in raw.glob("*.jsonl"):
        f.write_text("")
    fails(project, "corpus", "zero documents")


def test_invalid_utf8_under_error_policy(project, experiment):
    bad = project / "data" / "raw" / "stdlib" / "topics.jsonl"
    bad.write_bytes(bad.read_bytes() + b'{"id": "x", "text": "caf\xe9"}\n')
    fails(project, "corpus", "topics.jsonl", "UTF-8")


def test_unknown_component(project, experiment):
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(
        dvc_yaml.read_text().replace("component: text.corpus", "component: text.korpus")
    )
    fails(project, "corpus", "unknown component 'text.korpus'", "text.corpus")


def test_unknown_stage(project, experiment):
    fails(project, "korpus", "no stage named 'korpus'")


def test_unreachable_tracking_server_fails_before_work(project, experiment, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    fails(project, "corpus", "http://127.0.0.1:9", "unreachable")


def start_stage(root: Path, stage: str) -> subprocess.Popen:
    """`loom stage STAGE` in the background, in its own process group (to SIGKILL it all)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "loom"), "stage", stage],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_killed_mid_run_keeps_outputs_and_next_run_recovers(project, experiment):
    before = snapshot(project)
    edit_params(project, lambda p: p["bpe"]["large"].update(vocab_size=3000))
    target = project / "data" / "tokenizers" / "large"
    proc = start_stage(project, "bpe@large")
    scratch = target.parent / f"{atomic.SCRATCH_PREFIX}{proc.pid}-large"
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not scratch.exists():
        exp = client.get_experiment_by_name(experiment)
        if exp and client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
            break  # the stage is past validation and into its work
        time.sleep(0.05)
    assert proc.poll() is None, "stage finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot(project) == before
    edit_params(project, lambda p: p["bpe"]["large"].update(vocab_size=430))
    res = loom(project, "stage", "bpe@large")
    assert res.returncode == 0, res.stderr
    assert not scratch.exists()
    assert (
        yaml.safe_load((project / "metrics" / "bpe_large.json").read_text())["bpe"]["vocab_size"]
        == 430
    )


def test_killed_training_resumes_from_its_last_epoch_checkpoint(project, experiment):
    """A training stage killed mid-run resumes from its work directory's checkpoint on the
    next run and ends with exactly the model an uninterrupted run trains."""
    edit_params(project, lambda p: p["word2vec"].update(epochs=4, batch_size=32))
    model = project / "data" / "word2vec" / "small" / "model.safetensors"
    work = project / ".loom" / "work"
    proc = start_stage(project, "word2vec@small")
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if list(work.glob("word2vec-small-*/checkpoint.safetensors")):
            break  # at least one epoch is checkpointed
        time.sleep(0.05)
    assert proc.poll() is None, "stage finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (checkpoint,) = work.glob("word2vec-small-*/checkpoint.safetensors")

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    (killed,) = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")

    resumed = loom(project, "stage", "word2vec@small")
    assert resumed.returncode == 0, resumed.stderr
    assert "word2vec: resuming after epoch" in resumed.stderr
    assert not checkpoint.parent.exists(), "the work dir outlived a successful stage"
    resumed_model = model.read_bytes()
    plots = project / "plots" / "word2vec_small.json"
    resumed_plots = plots.read_bytes()
    # The killed run no longer looks alive; the resumed one says which run it continues.
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    resumed_run = client.get_run(resumed.stdout.split("(mlflow run ")[1].split(")")[0])
    assert resumed_run.data.tags["loom.resumed_from"] == killed.info.run_id

    fresh = loom(project, "stage", "word2vec@small")  # no checkpoint left: from scratch
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr
    assert model.read_bytes() == resumed_model
    # The whole loss curve, not only the points after the resume: in the DVC plots file
    # (byte for byte, so `dvc status` sees nothing modified) and in MLflow (steps and values).
    assert plots.read_bytes() == resumed_plots
    fresh_run = client.get_run(fresh.stdout.split("(mlflow run ")[1].split(")")[0])
    assert "loom.resumed_from" not in fresh_run.data.tags

    def history(run):
        points = client.get_metric_history(run.info.run_id, "loss")
        return sorted((m.step, m.value) for m in points)

    assert len(history(fresh_run)) >= 4 and history(resumed_run) == history(fresh_run)


def test_a_work_dir_in_use_by_another_process_is_not_shared(project, experiment, tmp_path):
    """Two workspaces whose runs share one work disk ($LOOM_WORK_DIR, as two workers of one
    machine): the second run of the same stage, config and inputs trains in a spare dir beside
    the first's, never resuming from (or removing) the first one's live checkpoint."""
    from components.config import to_dict
    from flows import project as project_module
    from flows import stage_runner
    from tests.flows.test_workspace import hold

    shared = tmp_path / "work"
    spec, _, config = stage_runner.prepare(project, "word2vec@small")
    deps = project_module.digests(project, spec.deps)
    os.environ[stage_runner.WORK_DIR_ENV] = str(shared)
    try:
        work = stage_runner.work_dir(project, "word2vec@small", to_dict(config), deps)
        holder = hold("work", work)
        try:
            (work / "live-checkpoint").write_text("the first run's")
            res = loom(project, "stage", "word2vec@small")
            assert res.returncode == 0, res.stderr
            assert (work / "live-checkpoint").read_text() == "the first run's"
            assert not work.with_name(work.name + ".1").exists()  # the spare, removed on success
            run = mlflow.MlflowClient().get_run(res.stdout.split("(mlflow run ")[1].split(")")[0])
            assert "loom.resumed_from" not in run.data.tags
        finally:
            holder.kill()
            holder.wait()
    finally:
        del os.environ[stage_runner.WORK_DIR_ENV]


def test_a_rerun_claims_the_spare_its_killed_attempt_left(tmp_path):
    from flows import stage_runner, workspace
    from tests.flows.test_workspace import hold

    work = tmp_path / "w2v-abc"
    spare = work.with_name("w2v-abc.1")
    spare.mkdir(parents=True)
    (spare / stage_runner.RUN_RECORD).write_text('{"run_id": "killed"}')
    with stage_runner.claim_work_dir(work, "rerun") as claimed:
        assert claimed == spare  # where the checkpoints are, not the empty primary
    holder = hold("work", spare)
    try:
        with stage_runner.claim_work_dir(work, "other") as claimed:
            assert claimed == work
            with stage_runner.claim_work_dir(work, "third") as third:
                assert third == work.with_name("w2v-abc.2")
    finally:
        holder.kill()
        holder.wait()
    holder = hold("work", work)
    try:
        with pytest.raises(workspace.WorkDirBusy, match=f"in use by pid {holder.pid}"):
            with stage_runner.claim_work_dir(work, "no spares", spares=0):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_stale_work_dirs_are_pruned_and_reported(tmp_path, monkeypatch):
    from flows import stage_runner, workspace

    monkeypatch.delenv(stage_runner.WORK_DIR_ENV, raising=False)
    base = tmp_path / ".loom" / "work"

    def work(name: str, stage: str, config: dict, age_days: float = 0) -> Path:
        d = base / name
        d.mkdir(parents=True)
        record = d / stage_runner.RUN_RECORD
        record.write_text(json.dumps({"run_id": "r", "stage": stage, "config": config}))
        stamp = time.time() - age_days * 86400
        os.utime(record, (stamp, stamp))
        return d

    keep = work("w2v-a", "word2vec@small", {"dim": 16})
    other_config = work("w2v-b", "word2vec@small", {"dim": 8})
    gone = work("old-x", "bpe@tiny", {})
    stale = work("c-d", "corpus", {"k": 1}, age_days=30)
    unselected = work("e-f", "bpe@large", {"v": 1})  # not in this run's selection: keep
    busy = work("w2v-c", "word2vec@small", {"dim": 4})
    stages = ["corpus", "word2vec@small", "bpe@large"]
    with workspace.work_dir_locked(busy, "loom stage word2vec@small"):
        pruned = stage_runner.prune_work_dirs(tmp_path, stages, {"word2vec@small": {"dim": 16}})
    reasons = {p.name: why for p, why in pruned}
    assert reasons == {
        "w2v-b": "the config of 'word2vec@small' has changed since",
        "old-x": "stage 'bpe@tiny' is no longer in dvc.yaml",
        "c-d": "untouched for 30 days",
    }
    assert keep.is_dir() and unselected.is_dir() and busy.is_dir()
    assert not (other_config.exists() or gone.exists() or stale.exists())
    # On a shared work disk, only age counts: other projects' stages are not ours to judge.
    monkeypatch.setenv(stage_runner.WORK_DIR_ENV, str(base))
    assert stage_runner.prune_work_dirs(tmp_path, [], {}) == []


def test_disk_full_names_where_it_happened(tmp_path):
    import errno

    from flows import stage_runner

    targets = {"model": tmp_path / "data" / "word2vec" / "small"}
    targets["model"].parent.mkdir(parents=True)
    err = stage_runner._disk_full(OSError(errno.ENOSPC, "No space left on device"), targets)
    assert err is not None and err.errno == errno.ENOSPC
    assert str(targets["model"].parent) in err.strerror and "MiB free" in err.strerror
    assert stage_runner._disk_full(OSError(errno.EACCES, "denied"), targets) is None


def test_a_corrupted_mlflow_store_is_named(project, monkeypatch, tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    fails(project, "corpus", str(db), "cannot be read")


def test_an_unwritable_output_directory_fails_before_the_work(project, experiment):
    """(As root, permissions do not stop a write: a file where the directory should be does.)"""
    import shutil

    shutil.rmtree(project / "metrics")
    (project / "metrics").write_text("not a directory")
    res = loom(project, "stage", "corpus")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert "metrics: cannot write outputs there" in last, res.stderr
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.get_experiment_by_name(experiment) is None  # failed before any tracking


def test_runtime_knobs_rerun_nothing_and_keep_the_work_dir(project, experiment):
    """`runtime.<stage>` knobs reach the component but not the stage's identity: `loom run`
    and `dvc repro` re-run nothing, and a killed run's work dir is still the one resumed."""
    from components.config import identity
    from flows import project as project_module
    from flows import stage_runner
    from tests.conftest import dvc

    def key() -> tuple[Path, Any]:
        spec, _, config = stage_runner.prepare(project, "word2vec@small")
        deps = project_module.digests(project, spec.deps)
        return stage_runner.work_dir(project, spec.name, identity(config), deps), config

    before, _ = key()
    knobs = ["runtime.word2vec.workers=1", "runtime.word2vec.compile=never"]
    res = loom(project, "run", *(a for k in knobs for a in ("-S", k)), "word2vec@small")
    assert res.returncode == 0, res.stdout + res.stderr
    (row,) = [line for line in res.stdout.splitlines() if line.startswith("word2vec@small ")]
    assert row.split()[1] == "skipped", res.stdout
    after, config = key()
    assert (config.workers, config.compile) == (1, "never")  # the component sees them
    assert after == before
    assert "up to date" in dvc(project, "status").stdout
    assert "didn't change" in dvc(project, "repro", "word2vec@small").stdout


def test_a_runtime_knob_in_the_stage_section_is_refused(project, experiment):
    edit_params(project, lambda p: p["word2vec"].update(device="cpu"))
    fails(project, "word2vec@small", "word2vec.device is a runtime knob", "runtime.word2vec.device")

    def unknown_knob(p: dict) -> None:
        del p["word2vec"]["device"]
        p["runtime"]["word2vec"]["dim"] = 8

    edit_params(project, unknown_knob)
    fails(project, "word2vec@small", "runtime.word2vec.dim", "not a runtime knob", "'workers'")


def test_nproc_needs_a_distributed_component(project, experiment):
    edit_params(project, lambda p: p["runtime"]["word2vec"].update(nproc=2))
    fails(project, "word2vec@small", "runtime.word2vec.nproc = 2", "runs on one process only")


def test_system_metrics_are_a_runtime_knob_off_by_default(project, experiment, monkeypatch):
    """`runtime.<stage>.system_metrics: true` samples the machine into the stage's run (MLflow's
    `system/...` metrics); without it there are none. The DVC outputs do not change."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    res = loom(project, "stage", "bpe@small")
    assert res.returncode == 0, res.stderr
    edit_params(project, lambda p: p["runtime"].update(bpe={"system_metrics": True}))
    res = loom(project, "stage", "bpe@small")
    assert res.returncode == 0, res.stderr
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    off, on = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    assert not [m for m in off.data.metrics if m.startswith("system/")]
    assert "system/cpu_utilization_percentage" in on.data.metrics, sorted(on.data.metrics)
    assert "system/system_memory_usage_megabytes" in on.data.metrics
    # The metrics and the plots file share a name: both are kept, under their directories.
    names = {a.path for d in ("metrics", "plots") for a in client.list_artifacts(on.info.run_id, d)}
    assert names == {"metrics/bpe_small.json", "plots/bpe_small.json"}

    edit_params(project, lambda p: p["runtime"].update(bpe={"system_metrics": "yes"}))
    fails(project, "bpe@small", "runtime.bpe.system_metrics = 'yes'", "expected true or false")


def _spec(inputs: dict[str, str]):
    from flows.project import StageSpec

    deps = list(inputs.values())
    return StageSpec(
        "s", "loom stage s", Path("."), "c", None, inputs, {"out": "o"}, deps, [], ["o"]
    )


def test_bind_accepts_a_declared_optional_input_left_out_or_given():
    from components.stage import Stage, StageResult
    from flows.project import ProjectError
    from flows.stage_runner import bind

    stage = Stage(
        "c", "1", dict, ("a",), ("out",), lambda c, io: StageResult(), optional_inputs=("w",)
    )
    bind(_spec({"a": "x"}), stage)
    bind(_spec({"a": "x", "w": "y"}), stage)
    with pytest.raises(ProjectError, match=r"expects \['a', 'w \(optional\)'\]"):
        bind(_spec({"w": "y"}), stage)  # the required one missing
    with pytest.raises(ProjectError, match="names \\['a', 'v'\\]"):
        bind(_spec({"a": "x", "v": "y"}), stage)  # one the component does not read
