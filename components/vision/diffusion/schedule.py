"""Noise schedules of discrete-time diffusion (DDPM, Ho et al. 2020): β_t for t = 0..T-1 and

    α_t = 1 - β_t,   ᾱ_t = Π_{s<=t} α_s,   x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε,   SNR(t) = ᾱ_t / (1-ᾱ_t)

kinds:
    linear          β_t = linspace(beta_start, beta_end)                      (DDPM)
    scaled_linear   β_t = linspace(√beta_start, √beta_end)²                   (Stable Diffusion)
    cosine          ᾱ_t = f(t+1) / f(0), f(u) = cos²((u/T + s) / (1 + s) · π/2),
                    β_t = 1 - ᾱ_t / ᾱ_{t-1} clipped at 0.999            (Nichol & Dhariwal 2021)

`zero_terminal_snr` rescales √ᾱ linearly so that √ᾱ_{T-1} = 0 and √ᾱ_0 is kept (Lin et al.
2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"): the last step is then
pure noise, as sampling starts from, and the model must learn to draw from nothing (with v or
x0 prediction: ε-prediction is undefined at SNR 0). `offset_noise` adds a per-channel
constant to ε (Guttenberg 2023), so the model learns to change an image's mean brightness.

The tables are computed in float64 (a product of 1000 factors) and kept in float32 on the CPU;
lookups move them to the device of the step indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from components.config import require
from components.train.config import is_number

ScheduleKind = Literal["linear", "scaled_linear", "cosine"]
KINDS = ("linear", "scaled_linear", "cosine")
MAX_BETA = 0.999  # cosine: the last steps' β would reach 1 (ᾱ -> 0 exactly) without a clip
MAX_TERMINAL_ALPHA_BAR = 0.05  # ᾱ_{T-1} above this: the last step is not noise (SD's: 0.0047)


@dataclass
class ScheduleConfig:
    kind: ScheduleKind = "scaled_linear"
    timesteps: int = 1000  # T
    beta_start: float = 0.00085  # linear kinds: β_0
    beta_end: float = 0.012  # linear kinds: β_{T-1}
    cosine_s: float = 0.008  # cosine: the offset s that keeps β_0 from being tiny
    zero_terminal_snr: bool = False  # rescale so ᾱ_{T-1} = 0 (needs v or x0 prediction)
    offset_noise: float = 0.0  # std of a per-(image, channel) constant added to ε

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", self.kind, "one of " + "|".join(KINDS))
        t = self.timesteps
        require(isinstance(t, int) and not isinstance(t, bool) and t >= 2, "timesteps", t,
                "an int >= 2")  # fmt: skip
        for key in ("beta_start", "beta_end"):
            value = getattr(self, key)
            require(is_number(value) and 0 < value < 1, key, value, "a float in (0, 1)")
        require(self.beta_start <= self.beta_end, "beta_end", self.beta_end,
                f"a float >= beta_start = {self.beta_start}")  # fmt: skip
        s = self.cosine_s
        require(is_number(s) and s >= 0, "cosine_s", s, "a float >= 0")
        o = self.offset_noise
        require(is_number(o) and o >= 0, "offset_noise", o, "a float >= 0")
        # Sampling starts from N(0, I): a schedule whose last step keeps much of the data
        # (SD's betas over 100 steps leave ᾱ = 0.6) trains on inputs it never samples from.
        last = float(torch.cumprod(1 - betas_of(self), dim=0)[-1])
        require(self.zero_terminal_snr or last <= MAX_TERMINAL_ALPHA_BAR, "beta_end",
                self.beta_end, f"a schedule that ends in noise: ᾱ at the last of {t} steps is "
                f"{last:.3g} (> {MAX_TERMINAL_ALPHA_BAR}); raise beta_end or timesteps, or set "
                "zero_terminal_snr")  # fmt: skip


def betas_of(config: ScheduleConfig) -> Tensor:
    """β_t, float64 [T]."""
    T = config.timesteps
    if config.kind == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    if config.kind == "scaled_linear":
        root = torch.linspace(
            math.sqrt(config.beta_start), math.sqrt(config.beta_end), T, dtype=torch.float64
        )
        return root**2
    s = config.cosine_s
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f[1:] / f[0]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return (1 - alpha_bar / previous).clamp(max=MAX_BETA)


def rescale_zero_terminal_snr(alpha_bar: Tensor) -> Tensor:
    """ᾱ [T] -> ᾱ' with √ᾱ'_t = (√ᾱ_t - √ᾱ_{T-1}) · √ᾱ_0 / (√ᾱ_0 - √ᾱ_{T-1}): the last is 0,
    the first unchanged (Lin et al. 2024, Algorithm 1)."""
    root = alpha_bar.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root**2


class NoiseSchedule:
    """The tables of a `ScheduleConfig` and the forward process."""

    def __init__(self, config: ScheduleConfig):
        self.config = config
        alpha_bar = torch.cumprod(1 - betas_of(config), dim=0)
        if config.zero_terminal_snr:
            alpha_bar = rescale_zero_terminal_snr(alpha_bar)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        alphas = alpha_bar / previous  # α_t (after a rescale, β_t = 1 - this)
        self.alphas_cumprod = alpha_bar.float()  # ᾱ_t [T]
        self.alphas = alphas.float()
        self.betas = (1 - alphas).float()

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ_t for int64 steps t [B] (t = -1: ᾱ = 1, the clean data a sampler ends at), on
        t's device, float32 [B]."""
        table = self.alphas_cumprod.to(t.device)
        return torch.where(t >= 0, table[t.clamp(min=0)], torch.ones((), device=t.device))

    def snr(self, t: Tensor) -> Tensor:
        """ᾱ_t / (1 - ᾱ_t), float32 [B]: inf at ᾱ = 1, 0 at ᾱ = 0."""
        a = self.alpha_bar(t)
        return a / (1 - a)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε; x0, noise [B, ...], t int64 [B] -> [B, ...] in x0's
        dtype (the roots are taken in at least float32: 1 - ᾱ_0 vanishes in bfloat16)."""
        a = _expand(self.alpha_bar(t), x0)
        a = a.to(torch.promote_types(a.dtype, x0.dtype))
        return a.sqrt().to(x0.dtype) * x0 + (1 - a).sqrt().to(x0.dtype) * noise

    def sample_noise(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """ε ~ N(0, I) like x0 [B, C, ...] (+ offset noise: offset_noise · N(0, 1) per (b, c),
        the same over the pixels), on x0's device and dtype. With a generator the draw is made
        on its device (a CPU generator gives the same noise for every device)."""
        where = x0.device if generator is None else generator.device
        noise = torch.randn(x0.shape, generator=generator, device=where, dtype=x0.dtype)
        if self.config.offset_noise > 0:
            shape = (*x0.shape[:2], *([1] * (x0.ndim - 2)))
            offset = torch.randn(shape, generator=generator, device=where, dtype=x0.dtype)
            noise = noise + self.config.offset_noise * offset
        return noise.to(x0.device)


def _expand(values: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, ...] broadcasting against `like` [B, ...]."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))
