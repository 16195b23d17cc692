"""Loom under DVC's experiment tools: `dvc exp run --temp`, `dvc exp run --queue` with
`dvc queue start`, `dvc exp show`, `dvc metrics show`, `dvc plots show` — real DVC, real MLflow.

An experiment runs in a temporary copy of the repository; its stages must work there and never
write into the user's workspace (DVC points $DVC_ROOT at the workspace, not at the copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import dvc, git

pytestmark = pytest.mark.slow

WATCHED = ("data", "metrics", "plots", "reports", "params.yaml", "dvc.lock")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file of the workspace's data, reports, params and lock."""
    out = {}
    for name in WATCHED:
        top = root / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def exp_project(built_project, tmp_path_factory):
    """A copy of the built project with its dvc.lock committed (the baseline experiments
    branch from), and an MLflow experiment of its own."""
    root = tmp_path_factory.mktemp("exp") / "proj"
    shutil.copytree(built_project, root, symlinks=True)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "pipeline ran: dvc.lock")
    name = f"dvc-exp-{uuid.uuid4().hex[:8]}"
    old = os.environ.get("LOOM_EXPERIMENT")
    os.environ["LOOM_EXPERIMENT"] = name  # inherited by dvc and the stages it runs
    yield root
    if old is None:
        os.environ.pop("LOOM_EXPERIMENT", None)
    else:
        os.environ["LOOM_EXPERIMENT"] = old


def exp_show(root: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> its metrics files' data."""
    res = dvc(root, "exp", "show", "--json")
    found = {}
    for baseline in json.loads(res.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                found[rev.get("name") or data.get("name")] = data.get("metrics") or {}
    return found


def mlflow_runs(exp_name: str):
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(os.environ["LOOM_EXPERIMENT"])
    assert experiment is not None
    return client.search_runs(
        [experiment.experiment_id], f"tags.`dvc.exp_name` = '{exp_name}'", max_results=100
    )


@pytest.fixture(scope="module")
def experiments(exp_project):
    """A 2-point sweep queued and run by a `dvc queue` worker while a `--temp` experiment runs
    in the foreground (both at once: the test waits on neither alone). Returns the workspace
    snapshots before and after, the `dvc exp show` listing, and the queue's final status."""
    before = snapshot(exp_project)
    for name, k in (("queued-4", 4), ("queued-5", 5)):
        res = dvc(
            exp_project, "exp", "run", "--queue", "-n", name, "-S", f"embedding_eval.neighbours={k}"
        )
        assert res.returncode == 0, res.stdout + res.stderr
    res = dvc(exp_project, "queue", "start", "-j", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        temp = dvc(
            exp_project, "exp", "run", "--temp", "-n", "temp-3", "-S", "embedding_eval.neighbours=3"
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = dvc(exp_project, "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(2)
        logs = (
            "" if "Failed" not in status else dvc(exp_project, "queue", "logs", "queued-4").stdout
        )
    finally:
        dvc(exp_project, "queue", "stop", "--kill", check=False)
    assert temp.returncode == 0, temp.stdout[-3000:] + temp.stderr[-3000:]
    assert "Failed" not in status and "Queued" not in status, status + logs
    return {"before": before, "after": snapshot(exp_project), "shown": exp_show(exp_project)}


def test_experiments_never_write_into_the_workspace(experiments):
    assert experiments["after"] == experiments["before"]


def test_dvc_exp_show_lists_every_experiment_with_its_metrics(experiments):
    shown = experiments["shown"]
    for name in ("temp-3", "queued-4", "queued-5"):
        assert name in shown, shown.keys()
        report = shown[name]["metrics/embedding_eval_small.json"]["data"]
        assert "wordsim353_spearman" in report["embedding_eval"]


@pytest.mark.parametrize("name", ["temp-3", "queued-4", "queued-5"])
def test_each_experiment_is_one_mlflow_parent_run_over_its_stages(experiments, exp_project, name):
    runs = mlflow_runs(name)
    parents = [r for r in runs if r.data.tags.get("loom.pipeline") == "true"]
    stages = [r for r in runs if "loom.stage" in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in runs]
    assert sorted(r.data.tags["loom.stage"] for r in stages) == [
        "embedding_eval@large",
        "embedding_eval@small",
    ]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stages)
    assert parent.data.params["params.embedding_eval.neighbours"] == name.split("-")[1]
    baseline = git(exp_project, "rev-parse", "HEAD").strip()
    assert {r.data.tags["dvc.exp_baseline_rev"] for r in runs} == {baseline}


def test_an_evaluation_run_carries_its_upstream_params_and_mlflow_source(experiments, exp_project):
    runs = mlflow_runs("temp-3")
    small = next(r for r in runs if r.data.tags.get("loom.stage") == "embedding_eval@small")
    # The evaluation run alone says what every upstream output was made with.
    assert small.data.params["upstream.bpe.vocab_size"] == "300"
    assert small.data.params["upstream.word2vec.dim"] == "16"
    assert small.data.params["upstream.corpus.normalization"] == "NFC"
    assert json.loads(small.data.tags["loom.upstream"]) == [
        "bpe@small",
        "corpus",
        "stdlib_text",
        "tokenize@small",
        "word2vec@small",
    ]
    # MLflow's own source columns, and datasets by repository-relative path.
    assert small.data.tags["mlflow.source.name"] == "loom stage embedding_eval@small"
    assert len(small.data.tags["mlflow.source.git.commit"]) == 40
    assert small.data.tags["mlflow.user"]
    assert small.inputs.dataset_inputs
    for ds in small.inputs.dataset_inputs:
        uri = json.loads(ds.dataset.source)["uri"]
        assert not os.path.isabs(uri) and str(exp_project) not in uri, uri


def test_dvc_metrics_show_groups_metrics_by_component(exp_project):
    res = dvc(exp_project, "metrics", "show", "--json")
    assert res.returncode == 0, res.stderr
    files = json.loads(res.stdout)[""]["data"]
    assert files["metrics/bpe_small.json"]["data"]["bpe"]["vocab_size"] == 300
    assert set(files["metrics/embedding_eval_large.json"]["data"]) == {"embedding_eval"}
    # Every column of the table names its component.
    header = dvc(exp_project, "metrics", "show").stdout.splitlines()[0].split()
    groups = {"stdlib_text", "corpus", "bpe", "tokenize", "word2vec", "embedding_eval"}
    assert header[0] == "Path" and all(col.split(".")[0] in groups for col in header[1:])


def test_dvc_plots_show_the_overlays_and_the_images(exp_project, tmp_path):
    res = dvc(exp_project, "plots", "show", "--json", "-o", str(tmp_path / "plots"))
    assert res.returncode == 0, res.stdout + res.stderr
    shown = json.loads(res.stdout)["data"]
    images = {k: v[0] for k, v in shown.items() if k.endswith("projection.png")}
    assert sorted(images) == [
        "reports/embeddings/large/projection.png",
        "reports/embeddings/small/projection.png",
    ]
    for image in images.values():
        assert image["type"] == "image"
        assert Path(image["url"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss = shown["word2vec_loss"][0]
    assert loss["type"] == "vega"
    sources = {d["filename"] for d in loss["content"]["data"]["values"]}
    assert sources == {"word2vec_small.json", "word2vec_large.json"}
