"""The autoencoder stage under torchrun (2 gloo ranks on CPU): the ranks end with one set of
weights, bit for bit — the KL-VAE's two param groups (autoencoder, discriminator from
disc_start) through the engine's gradient averaging, the VQ codebook through its all-reduced
EMA statistics and rank 0's broadcast k-means init and restarts. (Not equal to one process's
run: each rank draws its own posterior noise and k-means sees rank 0's share of the batch.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from components.config import build
from components.stage import StageIO
from components.vision.data.config import ImagesConfig
from components.vision.data.stage import STAGE as IMAGES
from tests.conftest import REPO

WORKER = "tests.components.vision.autoencoder.ddp_worker"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("images") / "digits"
    config = build(ImagesConfig, {"source": "digits", "limit": 120, "val_fraction": 0.2})
    IMAGES.run(config, StageIO(inputs={}, outputs={"images": out}))
    return out


def _run(nproc: int, images, out, kind: str) -> None:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", WORKER, str(images), str(out), kind]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_two_ranks_end_with_one_set_of_weights(digits, tmp_path, kind):
    _run(2, digits, tmp_path / "two", kind)
    rank0 = load_file(tmp_path / "two" / "rank0.safetensors")
    rank1 = load_file(tmp_path / "two" / "rank1.safetensors")
    for name, value in rank0.items():
        if name.endswith("recent") or name.endswith("recent_seen"):
            continue  # each rank remembers its own encoder outputs
        assert torch.equal(value, rank1[name]), name
    assert (tmp_path / "two" / "model" / "config.json").is_file()  # written by rank 0
