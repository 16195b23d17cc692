"""Distributed stages: `runtime.<stage>.nproc: 2` makes `loom stage` (and so `dvc repro`)
launch torchrun with 2 gloo ranks on CPU. One MLflow run records it, the outputs are swapped
in once, and they equal a 1-process run's within float tolerance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, dvc, git, loom
from tests.flows.ddp_stage import FAIL_RANK_ENV

pytestmark = pytest.mark.slow

DVC_YAML = {
    "stages": {
        "ddp_probe": {
            "cmd": "loom stage ddp_probe",
            "meta": {"component": "tests.flows.ddp_stage", "outputs": {"model": "data/model"}},
            "deps": ["tests/flows/ddp_stage.py"],
            "params": ["ddp_probe"],
            "outs": [{"data/model": {"persist": True}}],
            "metrics": [{"metrics/ddp_probe.json": {"persist": True}}],
        }
    }
}
TRAIN = {"steps": 12, "batch_size": 8, "lr": 0.05, "log_every": 1, "seed": 3}


def write_params(root: Path, nproc: int) -> None:
    params = {
        "ddp_probe": {"train": TRAIN},
        "runtime": {"ddp_probe": {"nproc": nproc, "train": {"progress": False}}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture
def ddp_project(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "proj"
    (root / "tests" / "flows").mkdir(parents=True)
    (root / "tests" / "flows" / "ddp_stage.py").write_text(
        (REPO / "tests" / "flows" / "ddp_stage.py").read_text()
    )
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    write_params(root, nproc=2)
    git(root, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "ddp probe")
    # The component is this repository's test module: importable in loom and in every rank.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return root


def stage_runs(experiment: str) -> list:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`loom.stage` = 'ddp_probe'")
    return sorted(runs, key=lambda r: r.info.start_time)


def test_two_ranks_make_one_run_equal_to_one_process(ddp_project, experiment):
    res = loom(ddp_project, "stage", "ddp_probe")
    assert res.returncode == 0, res.stdout + res.stderr
    two = load_file(ddp_project / "data" / "model" / "model.safetensors")
    (run,) = stage_runs(experiment)
    assert run.info.status == "FINISHED" and run.data.tags["loom.nproc"] == "2"
    assert run.data.metrics["world_size"] == 2.0
    client = mlflow.MlflowClient()
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert [s for s, _ in loss] == list(range(1, 13))  # rank 0's live curve, logged once

    write_params(ddp_project, nproc=1)  # a runtime knob: the same stage identity
    res = loom(ddp_project, "stage", "ddp_probe")
    assert res.returncode == 0, res.stdout + res.stderr
    one = load_file(ddp_project / "data" / "model" / "model.safetensors")
    assert stage_runs(experiment)[-1].data.metrics["world_size"] == 1.0
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)

    # Under `dvc repro`, through the stage's own cmd: torchrun again, one more run.
    write_params(ddp_project, nproc=2)
    res = dvc(ddp_project, "repro", "--force", "ddp_probe", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = stage_runs(experiment)
    assert len(runs) == 3 and runs[-1].data.tags["loom.nproc"] == "2"
    assert "ddp_probe" in yaml.safe_load((ddp_project / "dvc.lock").read_text())["stages"]
    for name in one:
        torch.testing.assert_close(
            load_file(ddp_project / "data" / "model" / "model.safetensors")[name], two[name]
        )


def test_a_failing_rank_fails_the_stage_naming_it(ddp_project, experiment, monkeypatch):
    monkeypatch.setenv(FAIL_RANK_ENV, "1")
    res = loom(ddp_project, "stage", "ddp_probe")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last == "loom stage ddp_probe: error: rank 1: planted failure on rank 1", res.stderr
    assert not (ddp_project / "data" / "model").exists()
    (run,) = stage_runs(experiment)
    assert run.info.status == "FAILED"


def test_nproc_is_checked_before_any_work(ddp_project, experiment):
    write_params(ddp_project, nproc=0)
    res = loom(ddp_project, "stage", "ddp_probe")
    assert res.returncode == 1
    assert "runtime.ddp_probe.nproc = 0: expected an int >= 1" in res.stderr
    assert stage_runs_or_none(experiment) == []


def stage_runs_or_none(experiment: str) -> list:
    exp = mlflow.MlflowClient().get_experiment_by_name(experiment)
    return stage_runs(experiment) if exp else []
