"""Convolutional residual block, optionally conditioned by scale and shift (a diffusion UNet's),
and the nearest-neighbour upsampling the decoders and UNets between such blocks share.

    x [B, C_in, H, W], cond [B, cond_dim] -> [B, C_out, H, W]

    h = conv3x3(silu(norm(x)))
    h = norm(h) * (1 + scale) + shift         (scale, shift) = linear(silu(cond)), [B, C_out] each
    h = conv3x3(dropout(silu(h)))
    out = skip(x) + h                         skip: identity, or a 1x1 conv when C_out != C_in

norm is GroupNorm. The condition (e.g. a timestep embedding) modulates the normalised features
channel by channel, as in improved DDPM (Nichol & Dhariwal 2021) and the latent diffusion UNet
(Rombach et al. 2022); without `cond_dim` the block has no condition (an autoencoder's). With
`zero_init` the last conv starts at zero, so the block starts as its skip path: a deep stack
begins close to the identity and each block learns a correction to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from components.config import require


@dataclass
class ResBlockConfig:
    in_channels: int
    out_channels: int | None = None  # None = in_channels
    cond_dim: int | None = None  # width of the condition embedding; None = no condition
    groups: int = 32  # GroupNorm groups; must divide both channel counts
    dropout: float = 0.0  # training only: before the last conv
    eps: float = 1e-5  # GroupNorm
    zero_init: bool = True  # last conv starts at zero: the block starts as its skip path

    def __post_init__(self) -> None:
        require(self.in_channels >= 1, "in_channels", self.in_channels, "an int >= 1")
        require(
            self.out_channels is None or self.out_channels >= 1,
            "out_channels",
            self.out_channels,
            "an int >= 1 or null (= in_channels)",
        )
        require(
            self.cond_dim is None or self.cond_dim >= 1,
            "cond_dim",
            self.cond_dim,
            "an int >= 1 or null (no condition)",
        )
        require(self.groups >= 1, "groups", self.groups, "an int >= 1")
        for key in ("in_channels", "out_channels"):
            channels = getattr(self, key)
            require(
                channels is None or channels % self.groups == 0,
                key,
                channels,
                f"a multiple of groups={self.groups}",
            )
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a float in [0, 1)")
        require(self.eps > 0.0, "eps", self.eps, "a float > 0")


class ResBlock(nn.Module):
    """See the module docstring. [B, C_in, H, W] (+ cond [B, cond_dim]) -> [B, C_out, H, W]."""

    def __init__(self, config: ResBlockConfig):
        super().__init__()
        self.config = config
        c_in = config.in_channels
        c_out = c_in if config.out_channels is None else config.out_channels
        self.norm_in = nn.GroupNorm(config.groups, c_in, eps=config.eps)
        self.conv_in = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.cond = (
            None
            if config.cond_dim is None
            else nn.Sequential(nn.SiLU(), nn.Linear(config.cond_dim, 2 * c_out))
        )
        self.norm_out = nn.GroupNorm(config.groups, c_out, eps=config.eps)
        self.dropout = nn.Dropout(config.dropout)
        self.conv_out = nn.Conv2d(c_out, c_out, 3, padding=1)
        if config.zero_init:
            nn.init.zeros_(self.conv_out.weight)
            assert self.conv_out.bias is not None  # Conv2d(bias=True)
            nn.init.zeros_(self.conv_out.bias)
        self.skip = nn.Identity() if c_out == c_in else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """x [B, C_in, H, W], cond [B, cond_dim] (required iff the config has cond_dim)
        -> [B, C_out, H, W]"""
        if (cond is None) != (self.cond is None):
            expected = "no condition" if self.cond is None else "a condition [B, cond_dim]"
            raise ValueError(f"this ResBlock takes {expected}")
        h = self.norm_out(self.conv_in(F.silu(self.norm_in(x))))
        if self.cond is not None:
            scale, shift = self.cond(cond)[:, :, None, None].chunk(2, dim=1)  # [B, C_out, 1, 1]
            h = h * (1 + scale) + shift
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Upsample(nn.Module):
    """Nearest x2 then conv3x3: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
