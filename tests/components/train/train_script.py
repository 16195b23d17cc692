"""A tiny seeded run of the training engine, for tests that need their own processes.

    python train_script.py --checkpoint-dir DIR [--config JSON] [--dropout P] [--kill-at STEP]
    torchrun --standalone --nproc_per_node 2 train_script.py ... --out FINAL.pt --record-saves DIR

`--kill-at k` SIGKILLs the process from `on_metrics` at step k, which comes after that step's
checkpoint. Rank 0 writes the final weights to `--out`; `--record-saves` makes every rank log
the checkpoint files it writes to DIR/saves-rank<r>.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from components.config import build
from components.train import TrainConfig, checkpoint, train

BASE_CONFIG = {
    "steps": 20,
    "batch_size": 8,
    "lr": 1e-2,
    "warmup_steps": 3,
    "ema_decay": 0.9,
    "weight_decay": 0.1,
    "val_every": 5,
    "checkpoint_every": 5,
    "keep_checkpoints": 2,
    "log_every": 1,
    "seed": 7,
    "progress": False,
}


class ToyTask:
    """Noisy linear regression, 8 -> 1, through a small MLP (with dropout if `dropout` > 0).

    60 training samples: 7 batches of 8 per epoch, so 20 steps cross two epoch boundaries.
    """

    def __init__(self, dropout: float = 0.2, train_size: int = 60):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(train_size + 20, 8, generator=gen)
        y = x @ torch.randn(8, 1, generator=gen) + 0.1 * torch.randn(
            train_size + 20, 1, generator=gen
        )
        self.train_data = TensorDataset(x[:train_size], y[:train_size])
        self.val_data = TensorDataset(x[train_size:], y[train_size:])
        self.dropout = dropout

    def model(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(8, 16), nn.Tanh(), nn.Dropout(self.dropout), nn.Linear(16, 1)
        )

    def loss(self, model: nn.Module, batch: list[torch.Tensor]):
        x, y = batch
        error = model(x) - y
        return error.pow(2).mean(), {"mae": error.abs().mean()}


class Stop(Exception):
    """Raised by `stop_at`: an in-process crash after a step's checkpoint."""


def stop_at(step: int):
    """An `on_metrics` callback that raises `Stop` at `step`."""

    def on_metrics(at: int, metrics: dict[str, float]) -> None:
        if at == step:
            raise Stop

    return on_metrics


def config(**overrides) -> TrainConfig:
    return build(TrainConfig, {**BASE_CONFIG, **overrides})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint-dir", type=Path)
    parser.add_argument("--config", default="{}", help="JSON overrides of BASE_CONFIG")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--record-saves", type=Path)
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))

    if args.record_saves:
        real_save = checkpoint.save

        def recording_save(path, state):
            with open(args.record_saves / f"saves-rank{rank}.txt", "a") as f:
                f.write(f"{Path(path).name}\n")
            real_save(path, state)

        checkpoint.save = recording_save

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = config(**json.loads(args.config))
    result = train(ToyTask(args.dropout), cfg, args.checkpoint_dir, on_metrics)
    if args.out and rank == 0:
        torch.save({"model": result.model.state_dict(), "metrics": result.metrics}, args.out)


if __name__ == "__main__":
    main()
