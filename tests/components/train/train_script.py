"""A tiny seeded run of the training engine, for tests that need their own processes.

    python train_script.py --checkpoint-dir DIR [--config JSON] [--dropout P] [--kill-at STEP]
        [--task toy|gan]
    torchrun --standalone --nproc_per_node 2 train_script.py ... --out FINAL.pt --record-saves DIR
        [--eval-log DIR]

`--kill-at k` SIGKILLs the process from `on_metrics` at step k, which comes after that step's
checkpoint. Rank 0 writes the final weights to `--out`; `--record-saves` makes every rank log
the checkpoint files it writes to DIR/saves-rank<r>.txt, `--eval-log` the steps at which it
runs the eval hook to DIR/eval-rank<r>.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from components.config import build
from components.train import ParamGroup, TrainConfig, checkpoint, train

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


class ConvTask(ToyTask):
    """Regression from 2 x 4 x 4 images through one 3 x 3 convolution."""

    def __init__(self, dropout: float = 0.2):
        super().__init__(dropout)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(80, 2, 4, 4, generator=gen)
        y = x.mean(dim=(1, 2, 3)).unsqueeze(1) + 0.1 * torch.randn(80, 1, generator=gen)
        self.train_data, self.val_data = (
            TensorDataset(x[:60], y[:60]),
            TensorDataset(x[60:], y[60:]),
        )

    def model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.Tanh(),
            nn.Dropout(self.dropout),
            nn.Flatten(),
            nn.Linear(64, 1),
        )


class GanModel(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.generator = nn.Sequential(
            nn.Linear(8, 3), nn.Tanh(), nn.Dropout(dropout), nn.Linear(3, 8)
        )
        self.discriminator = nn.Sequential(
            nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Dropout(dropout), nn.Linear(16, 1)
        )


class GanTask(ToyTask):
    """ToyTask's inputs through an 8 -> 3 -> 8 autoencoder (the generator) against a
    discriminator of real inputs and reconstructions that starts training at `disc_start`,
    as in a KL-VAE + PatchGAN: non-saturating losses, the generator's adversarial term on
    from `disc_start`. `alternate`: the generator trains at even steps, the discriminator at
    odd ones; else both at every step, from one forward pass."""

    def __init__(self, dropout: float = 0.2, disc_start: int = 7, alternate: bool = False):
        super().__init__(dropout)
        self.disc_start, self.alternate = disc_start, alternate

    def model(self) -> nn.Module:
        return GanModel(self.dropout)

    def param_groups(self, model: GanModel) -> list[ParamGroup]:
        return [
            ParamGroup("generator", model.generator.parameters()),
            ParamGroup(
                "discriminator",
                model.discriminator.parameters(),
                lr_scale=0.5,
                start_step=self.disc_start,
                betas=(0.5, 0.9),
            ),
        ]

    def loss(self, model: GanModel, batch: list[torch.Tensor], step: int):
        x, _ = batch
        recon = model.generator(x)
        rec = (recon - x).pow(2).mean()
        adversarial = F.softplus(-model.discriminator(recon)).mean()
        real, fake = model.discriminator(x), model.discriminator(recon.detach())
        losses = {
            "generator": rec + 0.1 * float(step >= self.disc_start) * adversarial,
            "discriminator": F.softplus(-real).mean() + F.softplus(fake).mean(),
        }
        if self.alternate:
            name = "generator" if step % 2 == 0 else "discriminator"
            losses = {name: losses[name]}
        return losses, {"rec": rec}


TASKS = {"toy": ToyTask, "gan": GanTask}


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
    parser.add_argument("--eval-log", type=Path)
    parser.add_argument("--task", choices=sorted(TASKS), default="toy")
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

    def on_eval(model: nn.Module, step: int) -> None:
        with open(args.eval_log / f"eval-rank{rank}.txt", "a") as f:
            f.write(f"{step}\n")

    cfg = config(**json.loads(args.config))
    task = TASKS[args.task](args.dropout)
    hook = on_eval if args.eval_log else None
    result = train(task, cfg, args.checkpoint_dir, on_metrics, hook)
    if args.out and rank == 0:
        torch.save({"model": result.model.state_dict(), "metrics": result.metrics}, args.out)


if __name__ == "__main__":
    main()
