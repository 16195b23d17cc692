"""A distributed stage for the launcher's tests: the training engine on a seeded regression,
declared by module path in a test project's dvc.yaml (`meta.component: tests.flows.ddp_stage`).
Rank 0 writes the trained weights; every rank reports the loss curve through `io.log` (only
rank 0's reaches MLflow)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from components.stage import Output, Stage, StageIO, StageResult
from components.train import TrainConfig, distributed, train


@dataclass
class DdpProbeConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=12, batch_size=8))


class Regression:
    """y = x·w + noise, 8 -> 1 through a small MLP; 64 samples."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(64, 8, generator=gen)
        y = x @ torch.randn(8, 1, generator=gen) + 0.05 * torch.randn(64, 1, generator=gen)
        self.train_data = TensorDataset(x, y)

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss(self, model: nn.Module, batch: list[torch.Tensor]):
        x, y = batch
        return (model(x) - y).pow(2).mean(), {}


FAIL_RANK_ENV = "LOOM_TEST_FAIL_RANK"  # this rank raises, as a crashed trainer would


def _run(config: DdpProbeConfig, io: StageIO) -> StageResult:
    if os.environ.get(FAIL_RANK_ENV) == str(distributed.detect().rank):
        raise ValueError(f"planted failure on rank {distributed.detect().rank}")
    report = lambda step, m: io.log.log_metrics(step, {"loss": m["train/loss"]})  # noqa: E731
    result = train(Regression(), config.train, io.work, on_metrics=report)
    if distributed.detect().is_main:
        out = io.outputs["model"]
        out.mkdir(parents=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
        save_file(weights, out / "model.safetensors")
    world = float(distributed.detect().world_size)
    return StageResult(
        metrics={"final_loss": result.metrics["train/loss"], "world_size": world},
        datasets=[],
        artifacts=[Output("model", "model.safetensors")],
    )


STAGE = Stage(
    name="tests.flows.ddp_stage",
    version="1",
    config=DdpProbeConfig,
    inputs=(),
    outputs=("model",),
    run=_run,
    key_metrics=("final_loss",),
    distributed=True,
)
