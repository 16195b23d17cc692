"""Position embeddings added to a sequence: x [B, N, dim] -> x + P[:N], P [max_len, dim].

sinusoidal (Vaswani et al. 2017), fixed:  P[p, 2i] = sin(p / 10000^(2i/dim)),
                                          P[p, 2i+1] = cos(p / 10000^(2i/dim))
learned: a trained table, initialised N(0, 0.02²) as in GPT-2.

2-D sine positions of an image's pixels (DETR's `PositionEmbeddingSine`, Carion et al. 2020),
`SinePosition2d`: [B, H, W] padding mask -> [B, dim, H, W]. A pixel's row y and column x count
the unpadded pixels up to it (1-based: y = 1, ..., h in an image of h unpadded rows), and each
half of the channels encodes one of them, rows first, with P = dim / 2 channels per axis:

    pe[2i]     = sin(y / T^(2i/P)),   pe[2i + 1]     = cos(y / T^(2i/P)),   i < P/2
    pe[P + 2i] = sin(x / T^(2i/P)),   pe[P + 2i + 1] = cos(x / T^(2i/P))

with T the temperature. `normalize` rescales the counts to y / (h + 1e-6) · scale, h the
unpadded rows of the pixel's column (x likewise with the row's unpadded columns), so images
of every size span the same angles, (0, scale].
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


class SinePosition2d(nn.Module):
    """2-D sine positions of the module docstring; no parameters.

    forward(mask bool [B, H, W], True = padded pixel) -> [B, dim, H, W], or [B, H·W, dim] with
    `flatten=True` (row-major, the order of `features.flatten(2).transpose(1, 2)`). An (H, W)
    size instead of a mask means no padding and gives B = 1, which broadcasts over a batch.
    """

    def __init__(
        self,
        dim: int,
        temperature: float = 10000.0,
        normalize: bool = False,
        scale: float = 2 * math.pi,  # used with normalize only
    ):
        super().__init__()
        if dim < 4 or dim % 4:
            # two axes, each a whole number of (sin, cos) pairs
            raise ValueError(f"2-D sine positions need dim a multiple of 4, got {dim}")
        if temperature <= 0 or scale <= 0:
            raise ValueError(f"temperature and scale must be > 0, got {temperature}, {scale}")
        self.dim, self.temperature = dim, temperature
        self.normalize, self.scale = normalize, scale

    def forward(
        self,
        mask: Tensor | tuple[int, int],
        flatten: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """mask bool [B, H, W] (True = padded) or (H, W) on `device` -> [B, dim, H, W], or
        [B, H·W, dim] if `flatten`. float32."""
        if not isinstance(mask, Tensor):
            mask = torch.zeros(1, *mask, dtype=torch.bool, device=device)
        unpadded = ~mask
        y = unpadded.cumsum(1, dtype=torch.float32)  # [B, H, W]
        x = unpadded.cumsum(2, dtype=torch.float32)
        if self.normalize:
            # the last count is the column's (row's) number of unpadded pixels; the 1e-6 (DETR's)
            # keeps an all-padded one at 0 instead of NaN
            y = y / (y[:, -1:, :] + 1e-6) * self.scale
            x = x / (x[:, :, -1:] + 1e-6) * self.scale
        per_axis = self.dim // 2
        exponent = torch.arange(0, per_axis, 2, dtype=torch.float32, device=mask.device)
        freq = self.temperature ** (exponent / per_axis)  # [P/2], one per (sin, cos) pair
        pe = torch.cat([self._sin_cos(y, freq), self._sin_cos(x, freq)], dim=-1)  # [B, H, W, dim]
        return pe.flatten(1, 2) if flatten else pe.permute(0, 3, 1, 2)

    @staticmethod
    def _sin_cos(position: Tensor, freq: Tensor) -> Tensor:
        """[B, H, W], [P/2] -> [B, H, W, P] with (sin, cos) of each angle side by side."""
        angle = position[..., None] / freq
        return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)
