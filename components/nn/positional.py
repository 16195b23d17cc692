"""Position embeddings added to a sequence: x [B, N, dim] -> x + P[:N], P [max_len, dim].

sinusoidal (Vaswani et al. 2017), fixed:  P[p, 2i] = sin(p / 10000^(2i/dim)),
                                          P[p, 2i+1] = cos(p / 10000^(2i/dim))
learned: a trained table, initialised N(0, 0.02²) as in GPT-2.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

PositionKind = Literal["sinusoidal", "learned", "none"]


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """[length, dim] float32 table of the formula above; dim must be even."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    position = torch.arange(length, dtype=torch.float64)[:, None]  # [L, 1]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * -(math.log(1e4) / dim))
    angle = position * inv_freq  # [L, dim/2]; float64 keeps large positions exact
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1).float()


class PositionEmbedding(nn.Module):
    """Adds P[:N] to x [B, N, dim]; "none" adds nothing."""

    def __init__(self, kind: PositionKind, dim: int, max_len: int):
        super().__init__()
        self.kind, self.max_len = kind, max_len
        self.table: Tensor | None
        if kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)
        elif kind == "learned":
            self.table = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        else:
            self.table = None

    def forward(self, x: Tensor) -> Tensor:
        """x [B, N, dim] -> [B, N, dim]"""
        if self.table is None:
            return x
        n = x.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} > max_len {self.max_len}")
        return x + self.table[:n].to(x.dtype)
