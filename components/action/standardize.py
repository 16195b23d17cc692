"""Per-dimension feature standardisation, the first layer of every action detector.

The features mix scales: pooled latents (unit-ish) and their frame differences (a slow move
changes them by a few hundredths per frame). Unscaled, the motion dimensions barely reach the
first projection's gradient. The train streams' mean and standard deviation are buffers of
the model, so they are saved and resumed with its weights and applied online as in training.

    scale = FeatureScale(dim); scale.fit(train_features)      # [N, D]
    scale(x)                                                  # [..., D] -> (x - mean) / std
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MIN_STD = 1e-6  # a constant dimension is centred, not blown up


class FeatureScale(nn.Module):
    mean: Tensor  # [D] buffers
    std: Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features: Tensor) -> None:
        """features [N, D]: every train frame."""
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features {list(features.shape)}: expected [N, {self.mean.shape[0]}]")
        features = features.double()  # a tiny spread on a large offset needs the precision
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(MIN_STD))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
