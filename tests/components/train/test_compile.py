"""Runtime knobs on CPU: `compile` and `channels_last` (test_gpu.py checks `auto` on CUDA).

`always` compiles for real (Inductor and a C++ compiler): one graph of a tiny model, built
once (10-40 s on 2 cores) and reused by the runs after it.
"""

import dataclasses

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from components.train import checkpoint, train
from tests.components.train.train_script import ConvTask, Stop, ToyTask, config, stop_at


class Regressor(nn.Module):
    """ToyTask's MLP under a root module of our own (Dynamo does not trace a bare
    `nn.Sequential` compiled in place: torch's own files are on its skip list)."""

    def __init__(self, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(8, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class RegressorTask(ToyTask):
    def model(self) -> nn.Module:
        return Regressor(self.dropout)


def test_never_and_auto_do_not_compile_on_cpu(monkeypatch):
    asked = []
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: asked.append(args))
    for switch in ("never", "auto"):
        result = train(RegressorTask(), config(steps=2, compile=switch, device="cpu"))
        assert result.step == 2
    assert asked == []


def test_always_compiles_trains_like_eager_and_resumes_exactly(tmp_path, monkeypatch):
    real, asked = torch.compile, []

    def spy(fn, *args, **kwargs):
        asked.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    traced = counters["frames"]["ok"]
    # no dropout (compiled kernels draw their own masks) and no validation: one graph to build
    cfg = config(steps=6, val_every=None, checkpoint_every=3, compile="always", device="cpu")
    compiled = train(RegressorTask(dropout=0.0), cfg)
    assert len(asked) == 1 and counters["frames"]["ok"] > traced  # Dynamo traced the forward
    eager = train(RegressorTask(dropout=0.0), dataclasses.replace(cfg, compile="never"))
    assert len(asked) == 1
    torch.testing.assert_close(compiled.model.state_dict(), eager.model.state_dict())
    loss, eager_loss = compiled.metrics["train/loss"], eager.metrics["train/loss"]
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())  # same names

    # compiled, crashed after step 3 and resumed: the uninterrupted compiled run, bitwise
    with pytest.raises(Stop):
        train(RegressorTask(dropout=0.0), cfg, tmp_path, stop_at(3))
    resumed = train(RegressorTask(dropout=0.0), cfg, tmp_path)
    assert resumed.resumed_from == 3 and resumed.metrics == compiled.metrics
    for a, b in zip(resumed.model.parameters(), compiled.model.parameters(), strict=True):
        assert torch.equal(a, b)


def _channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_channels_last_always_trains_like_contiguous_and_resumes_exactly(tmp_path):
    cfg = config(steps=8, channels_last="always")
    nhwc = train(ConvTask(dropout=0.0), cfg)
    assert _channels_last(nhwc.model[0].weight) and _channels_last(nhwc.ema[0].weight)
    nchw = train(ConvTask(dropout=0.0), config(steps=8, channels_last="auto"))  # CPU: off
    assert nchw.model[0].weight.is_contiguous()
    torch.testing.assert_close(nhwc.model.state_dict(), nchw.model.state_dict())

    whole = train(ConvTask(), cfg)
    with pytest.raises(Stop):
        train(ConvTask(), cfg, tmp_path, stop_at(5))
    resumed = train(ConvTask(), cfg, tmp_path)
    assert resumed.resumed_from == 5 and resumed.metrics == whole.metrics
    assert _channels_last(resumed.model[0].weight)
    state = checkpoint.load(checkpoint.latest(tmp_path))
    assert _channels_last(state["optimizer"]["state"][0]["exp_avg"])  # moments follow weights
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)
