"""`loom stage NAME` on bad input: a clear message, a non-zero exit, and the last good
outputs left exactly as they were."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    assert yaml.safe_load((project / "metrics" / "bpe_large.json").read_text())["vocab_size"] == 430


def test_killed_training_resumes_from_its_last_epoch_checkpoint(project, experiment):
    """A training stage killed mid-run resumes from its work directory's checkpoint on the
    next run and ends with exactly the model an uninterrupted run trains."""
    edit_params(project, lambda p: p["word2vec"].update(epochs=12, batch_size=16))
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

    resumed = loom(project, "stage", "word2vec@small")
    assert resumed.returncode == 0, resumed.stderr
    assert "word2vec: resuming after epoch" in resumed.stderr
    assert not checkpoint.parent.exists(), "the work dir outlived a successful stage"
    resumed_model = model.read_bytes()

    fresh = loom(project, "stage", "word2vec@small")  # no checkpoint left: from scratch
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr
    assert model.read_bytes() == resumed_model
