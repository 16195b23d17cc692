"""Exponential moving average of a model's weights, for validation and export.

After each optimizer step, for every floating-point parameter and buffer w:

    ema <- decay * ema + (1 - decay) * w

Integer buffers (e.g. BatchNorm's `num_batches_tracked`) are copied. The EMA model is a
frozen deep copy in eval mode, so it runs through the same `Task.loss` as the model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Ema:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model` (same architecture, unwrapped from DDP)."""
        ema_state, state = self.model.state_dict(), model.state_dict()
        for name, average in ema_state.items():
            value = state[name].detach()
            if average.is_floating_point():
                average.lerp_(value, 1.0 - self.decay)  # a + (1-d) (w - a) = d a + (1-d) w
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
