"""Learning rate: linear warmup, then cosine, linear or constant decay towards `min_lr`.

`lr_at(s)` is the rate of update s (0-based), a pure function of the step, so a schedule's
whole state is its step count. Decay runs over the updates after warmup and reaches `min_lr`
one update past the last. Worked example (lr=1, min_lr=0, warmup_steps=2, steps=6):

    update s:   0     1     2     3       4     5
    linear:     0.5   1.0   1.0   0.75    0.5   0.25
    cosine:     0.5   1.0   1.0   0.854   0.5   0.146
"""

from __future__ import annotations

import math

import torch

from components.train.config import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of update `step` (0-based) under `config`'s schedule."""
    lr, warmup = config.lr, config.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    if config.schedule == "cosine":
        return config.min_lr + (lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "linear":
        return lr - (lr - config.min_lr) * progress
    return lr


class LrSchedule:
    """Sets the optimizer's learning rate before each update; `state_dict` is the step.

    A param group with an `lr_scale` entry gets `lr_scale` times the scheduled rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.optimizer, self.config, self.step_count = optimizer, config, 0

    def apply(self) -> float:
        """Set the rate of the next update (number `step_count`) on every param group, and
        return it (unscaled)."""
        lr = lr_at(self.step_count, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step_count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_count = int(state["step"])
