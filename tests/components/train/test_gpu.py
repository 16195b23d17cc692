"""On a CUDA machine: `auto` picks the GPU and bf16 autocast, and resume stays exact."""

import pytest
import torch

from components.train import checkpoint, train
from tests.components.train.train_script import Stop, ToyTask, config, stop_at

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_bf16_run_resumes_exactly(tmp_path):
    cfg = config(device="auto", precision="auto", num_workers=2)
    full = train(ToyTask(), cfg, tmp_path / "full")
    assert next(full.model.parameters()).device.type == "cuda"
    with pytest.raises(Stop):
        train(ToyTask(), cfg, tmp_path / "part", stop_at(12))
    resumed = train(ToyTask(), cfg, tmp_path / "part")
    assert resumed.resumed_from == 10
    got = checkpoint.load(checkpoint.latest(tmp_path / "part"))
    expected = checkpoint.load(checkpoint.latest(tmp_path / "full"))
    for part in ("model", "ema", "optimizer"):
        torch.testing.assert_close(got[part], expected[part])
    assert len(got["rng"][0]["cuda"]) == torch.cuda.device_count()


def test_bf16_autocast_is_active_on_cuda():
    seen = []

    class Probe(ToyTask):
        def loss(self, model, batch):
            seen.append(model[0](batch[0]).dtype)
            return super().loss(model, batch)

    train(Probe(), config(steps=1, device="cuda", val_every=None))
    assert seen == [torch.bfloat16]
