"""2 CPU ranks under torchrun (gloo) train like 1 process with the same global batch: through
DDP, and with param groups (a GAN) through the engine's own gradient averaging."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.train import checkpoint, train
from components.train.distributed import DistEnv, detect
from tests.components.train.train_script import GanTask, ToyTask, config

SCRIPT = Path(__file__).with_name("train_script.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_detect(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert detect() == DistEnv(0, 0, 1) and not detect().enabled
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert detect() == DistEnv(rank=3, local_rank=1, world_size=4)
    assert detect().enabled and not detect().is_main


# No dropout: ranks draw different masks by design. The ranks also accumulate 2 micro-batches.
COMMON = {"steps": 12, "checkpoint_every": 4, "keep_checkpoints": 5, "val_every": 6}


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(SCRIPT), "--dropout", "0"]
    cmd += ["--config", json.dumps({**COMMON, "grad_accum": 2}), "--checkpoint-dir"]
    cmd += [str(tmp_path / "ddp"), "--out", str(tmp_path / "final.pt"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return train(ToyTask(dropout=0.0), config(**COMMON), tmp_path_factory.mktemp("single"))


def test_two_ranks_equal_one_process(tmp_path, single):
    ran = _torchrun(tmp_path, "--record-saves", str(tmp_path))
    assert ran.returncode == 0, ran.stderr[-3000:]
    ddp = torch.load(tmp_path / "final.pt", weights_only=True)
    torch.testing.assert_close(ddp["model"], single.model.state_dict(), rtol=1e-5, atol=1e-6)
    for key in ("train/loss", "train/grad_norm", "val/loss", "val_ema/loss"):
        assert ddp["metrics"][key] == pytest.approx(single.metrics[key], rel=1e-5), key

    saves = ["step-00000004.pt", "step-00000008.pt", "step-00000012.pt"]
    assert (tmp_path / "saves-rank0.txt").read_text().split() == saves
    assert not (tmp_path / "saves-rank1.txt").exists()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "ddp")] == saves
    state = checkpoint.load(checkpoint.latest(tmp_path / "ddp"))
    assert len(state["rng"]) == 2  # each rank's RNG, to resume each rank's stream
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def test_killed_ddp_run_resumes(tmp_path, single):
    killed = _torchrun(tmp_path, "--kill-at", "10")  # rank 0 dies; torchrun stops rank 1
    assert killed.returncode != 0 and not (tmp_path / "final.pt").exists()
    assert checkpoint.latest(tmp_path / "ddp") == checkpoint.path_for(tmp_path / "ddp", 8)
    resumed = _torchrun(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ddp = torch.load(tmp_path / "final.pt", weights_only=True)
    torch.testing.assert_close(ddp["model"], single.model.state_dict(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def single_gan(tmp_path_factory):
    return train(GanTask(dropout=0.0), config(**COMMON), tmp_path_factory.mktemp("single_gan"))


def test_two_ranks_train_a_gan_like_one_process(tmp_path, single_gan):
    """Two losses, two groups, the discriminator from update 7; the eval hook on rank 0 only."""
    ran = _torchrun(tmp_path, "--task", "gan", "--eval-log", str(tmp_path))
    assert ran.returncode == 0, ran.stderr[-3000:]
    ddp = torch.load(tmp_path / "final.pt", weights_only=True)
    torch.testing.assert_close(ddp["model"], single_gan.model.state_dict(), rtol=1e-5, atol=1e-6)
    keys = ["train/loss/generator", "train/grad_norm/discriminator", "val/loss/discriminator"]
    for key in keys:
        assert ddp["metrics"][key] == pytest.approx(single_gan.metrics[key], rel=1e-5), key
    assert (tmp_path / "eval-rank0.txt").read_text().split() == ["6", "12"]
    assert not (tmp_path / "eval-rank1.txt").exists()
