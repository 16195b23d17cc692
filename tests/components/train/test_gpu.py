"""On a CUDA machine: `auto` picks the GPU, bf16 autocast, torch.compile and channels-last
(for conv weights), and resume stays exact."""

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from components.train import checkpoint, train
from tests.components.train.train_script import ConvTask, GanTask, Stop, ToyTask, config, stop_at

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


class ConvNet(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Tanh(), nn.Dropout(dropout), nn.Flatten(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


class ConvNetTask(ConvTask):
    def model(self) -> nn.Module:
        return ConvNet(self.dropout)


def test_compiled_channels_last_run_resumes_exactly(tmp_path):
    cfg = config(device="auto")  # compile, channels_last, precision: auto
    traced = counters["frames"]["ok"]
    full = train(ConvNetTask(), cfg, tmp_path / "full")
    assert counters["frames"]["ok"] > traced  # compiled
    weight = full.model.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    with pytest.raises(Stop):
        train(ConvNetTask(), cfg, tmp_path / "part", stop_at(12))
    resumed = train(ConvNetTask(), cfg, tmp_path / "part")
    assert resumed.resumed_from == 10
    got = checkpoint.load(checkpoint.latest(tmp_path / "part"))
    expected = checkpoint.load(checkpoint.latest(tmp_path / "full"))
    for part in ("model", "ema", "optimizer"):
        torch.testing.assert_close(got[part], expected[part])


def test_gan_with_a_delayed_group_resumes_exactly(tmp_path):
    cfg = config(device="cuda")
    full = train(GanTask(), cfg, tmp_path / "full")
    assert next(full.model.parameters()).device.type == "cuda"
    with pytest.raises(Stop):
        train(GanTask(), cfg, tmp_path / "part", stop_at(13))
    train(GanTask(), cfg, tmp_path / "part")
    got = checkpoint.load(checkpoint.latest(tmp_path / "part"))
    expected = checkpoint.load(checkpoint.latest(tmp_path / "full"))
    for part in ("model", "ema", "optimizer"):
        torch.testing.assert_close(got[part], expected[part])
