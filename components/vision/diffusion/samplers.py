"""Samplers: explicit loops from noise to latents, apart from the network.

A sampler visits `timesteps` (int64 steps, noisiest first) and at each turns the network's
output at x_t into x at the next visited step; `step` returns a `SamplerStep`. With
a = ᾱ_t, a' = ᾱ at the next step (1 after the last), and (x̂0, ε̂) from the output
(`prediction.to_x0_eps`):

    ddpm      ancestral (Ho et al. 2020): x' ~ q(x' | x_t, x̂0) = N(μ̃, β̃ I),
              μ̃ = √a' β/(1-a) x̂0 + √(a/a') (1-a')/(1-a) x_t,  β̃ = β (1-a')/(1-a),
              β = 1 - a/a' (over a strided subset too: β from the visited steps' ᾱ)
    ddim      Song et al. 2021: x' = √a' x̂0 + √(1-a'-σ²) ε̂ + σ z,  z ~ N(0, I),
              σ = η √((1-a')/(1-a)) √(1 - a/a'); η = 0 deterministic, η = 1 is ddpm's step
    dpmpp_2m  DPM-Solver++(2M) (Lu et al. 2022), multistep in λ = log(α/σ), α = √a, σ = √(1-a),
              h = λ' - λ:  x' = (σ'/σ) x_t - α'(e^{-h} - 1) D,  D = x̂0 (first order: the first
              and last steps) or (1 + 1/(2r)) x̂0 - 1/(2r) x̂0_prev, r = h_prev / h (second order)

Every kind ends with a step to ᾱ = 1 (t = -1 in `NoiseSchedule.alpha_bar`), which lands on
x̂0 itself. The network is called once per visited step; the kind of its output (eps, v, x0) is
the sampler's `prediction`, converted through `prediction.to_x0_eps`, so every sampler works
for every prediction type.

Timestep spacing (`steps` of the T trained steps, noisiest first), as diffusers names it:
    trailing  t_i = round(T - i·T/steps) - 1: the first step is always T-1, the last trained
              step (pure noise under zero terminal SNR), and steps = T visits every step.
              The default, as Lin et al. 2024 recommend.
    leading   t_i = (steps - 1 - i)·⌊T/steps⌋: ends at t = 0 but starts at T - ⌊T/steps⌋, a
              step less noisy than the pure noise sampling starts from (what Stable Diffusion
              1.x shipped, without its steps_offset of 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from components.config import require
from components.train.config import is_number
from components.vision.diffusion.prediction import PREDICTIONS, PredictionType, to_x0_eps
from components.vision.diffusion.schedule import NoiseSchedule

SamplerKind = Literal["ddpm", "ddim", "dpmpp_2m"]
KINDS = ("ddpm", "ddim", "dpmpp_2m")
Spacing = Literal["trailing", "leading"]
SPACINGS = ("trailing", "leading")
Denoise = Callable[[Tensor, Tensor], Tensor]  # (x_t [B, ...], t int64 [B]) -> network output
TINY = 1e-20  # floor of ᾱ, 1-ᾱ and σ where divided by or logged: finite at ᾱ = 0 and 1


@dataclass
class SamplerConfig:
    kind: SamplerKind = "ddim"
    steps: int = 50  # network calls (each on a doubled batch under guidance), <= the T
    eta: float = 0.0  # ddim: 0 = deterministic, 1 = ancestral (ddpm's step)
    spacing: Spacing = "trailing"  # which `steps` of the T to visit (module docstring)

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", self.kind, "one of " + "|".join(KINDS))
        s = self.steps
        ok = isinstance(s, int) and not isinstance(s, bool) and s >= 1
        require(ok, "steps", s, "an int >= 1")
        require(is_number(self.eta) and self.eta >= 0, "eta", self.eta, "a float >= 0")
        require(self.spacing in SPACINGS, "spacing", self.spacing, "one of " + "|".join(SPACINGS))


@dataclass(frozen=True)
class SamplerStep:
    prev_sample: Tensor  # x at the next visited step [B, ...]
    pred_x0: Tensor  # the network's estimate of the clean latents at this step [B, ...]


def spaced_timesteps(timesteps: int, steps: int, spacing: Spacing = "trailing") -> list[int]:
    """`steps` of 0..timesteps-1, noisiest first (module docstring).

    >>> spaced_timesteps(1000, 4)
    [999, 749, 499, 249]
    >>> spaced_timesteps(1000, 4, "leading")
    [750, 500, 250, 0]
    """
    require(1 <= steps <= timesteps, "steps", steps, f"an int in [1, {timesteps}] (the T)")
    require(spacing in SPACINGS, "spacing", spacing, "one of " + "|".join(SPACINGS))
    if spacing == "trailing":
        return [round(timesteps - i * timesteps / steps) - 1 for i in range(steps)]
    ratio = timesteps // steps
    return [(steps - 1 - i) * ratio for i in range(steps)]


class Sampler:
    """Shared by the kinds: the visited steps and their ᾱ. Subclasses define `step`."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: PredictionType,
        steps: int,
        spacing: Spacing = "trailing",
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction type {prediction!r}: expected one of eps|v|x0")
        self.schedule, self.prediction = schedule, prediction
        self.timesteps = spaced_timesteps(schedule.timesteps, steps, spacing)

    def _alpha_bars(self, t_index: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(ᾱ at visited step `t_index`, ᾱ at the next: 1 after the last), [B] on like's
        device."""
        steps = self.timesteps
        following = steps[t_index + 1] if t_index + 1 < len(steps) else -1
        b = like.shape[0]
        t = torch.full((b,), steps[t_index], dtype=torch.int64, device=like.device)
        t_next = torch.full((b,), following, dtype=torch.int64, device=like.device)
        return self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_next)

    def _estimates(self, output: Tensor, x_t: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        return to_x0_eps(self.prediction, output.to(x_t.dtype), x_t, a)

    def step(
        self, output: Tensor, t_index: int, x_t: Tensor, generator: torch.Generator | None = None
    ) -> SamplerStep:
        """The network's output at x_t [B, ...], the `t_index`-th visited step -> x there next."""
        raise NotImplementedError


def _b(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class DdpmSampler(Sampler):
    """Ancestral sampling: x' drawn from the posterior q(x' | x_t, x̂0) (module docstring)."""

    def posterior(
        self, x0: Tensor, x_t: Tensor, a: Tensor, a_next: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Mean μ̃ [B, ...] and variance β̃ [B, 1, ...] of q(x' | x_t, x0) between two visited
        steps of ᾱ a [B] and a' = a_next [B]; β = 1 - a/a' is the strided step's (= β_t when
        every step is visited)."""
        a, a_next = _b(a, x_t), _b(a_next, x_t)
        beta = 1 - a / a_next
        one_minus = (1 - a).clamp(min=TINY)
        mean = (
            a_next.sqrt() * beta / one_minus * x0
            + (a / a_next).sqrt() * (1 - a_next) / one_minus * x_t
        )
        return mean, beta * (1 - a_next) / one_minus

    def step(
        self, output: Tensor, t_index: int, x_t: Tensor, generator: torch.Generator | None = None
    ) -> SamplerStep:
        a, a_next = self._alpha_bars(t_index, x_t)
        x0, _ = self._estimates(output, x_t, a)
        mean, variance = self.posterior(x0, x_t, a, a_next)
        if t_index + 1 == len(self.timesteps):
            return SamplerStep(mean, x0)  # variance 0: the last step lands on x̂0
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return SamplerStep(mean + variance.sqrt() * z, x0)


class DdimSampler(Sampler):
    """x' = √a' x̂0 + √(1-a'-σ²) ε̂ + σ z; η scales σ from 0 (deterministic) to ddpm's."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: PredictionType,
        steps: int,
        eta: float = 0.0,
        spacing: Spacing = "trailing",
    ):
        super().__init__(schedule, prediction, steps, spacing)
        if not eta >= 0:  # also refuses NaN
            raise ValueError(f"eta = {eta}: expected a float >= 0")
        self.eta = eta

    def step(
        self, output: Tensor, t_index: int, x_t: Tensor, generator: torch.Generator | None = None
    ) -> SamplerStep:
        a, a_next = self._alpha_bars(t_index, x_t)
        x0, eps = self._estimates(output, x_t, a)
        a, a_next = _b(a, x_t), _b(a_next, x_t)
        sigma = (
            self.eta
            * ((1 - a_next) / (1 - a).clamp(min=TINY)).sqrt()
            * (1 - a / a_next).clamp(min=0).sqrt()
        )
        direction = (1 - a_next - sigma**2).clamp(min=0).sqrt() * eps
        prev = a_next.sqrt() * x0 + direction
        if self.eta > 0 and t_index + 1 < len(self.timesteps):
            z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            prev = prev + sigma * z
        return SamplerStep(prev, x0)


class DpmSolverPP2M(Sampler):
    """Second-order multistep: keeps the previous step's x̂0 and λ (reset at t_index 0, so one
    sampler serves one loop at a time). First order at the first step (no previous x̂0) and at
    the last, to ᾱ = 1, where λ' = inf: e^{-h} = 0 and x' is x̂0, as diffusers'
    DPMSolverMultistepScheduler with lower_order_final and final_sigmas_type "zero".

    Under zero terminal SNR the first step's ᾱ = 0 makes λ = -inf; √ᾱ is floored at √TINY, so
    that step is (to 1e-10) the exact limit x' = σ' x_T + α' x̂0, and the next step's r is
    large, which makes it first order too: no information came from the pure-noise step."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: PredictionType,
        steps: int,
        spacing: Spacing = "trailing",
    ):
        super().__init__(schedule, prediction, steps, spacing)
        self._previous: tuple[Tensor, Tensor] | None = None  # (x̂0, λ) of the step before

    @staticmethod
    def _lambda(a: Tensor) -> Tensor:
        return a.clamp(min=TINY).sqrt().log() - (1 - a).clamp(min=TINY).sqrt().log()

    def step(
        self, output: Tensor, t_index: int, x_t: Tensor, generator: torch.Generator | None = None
    ) -> SamplerStep:
        if t_index == 0:
            self._previous = None
        a, a_next = self._alpha_bars(t_index, x_t)
        x0, _ = self._estimates(output, x_t, a)
        last = t_index + 1 == len(self.timesteps)
        if last:  # to ᾱ = 1: σ' = 0, and x' is the estimate itself (first order, as
            self._previous = None  # diffusers' lower_order_final)
            return SamplerStep(x0, x0)
        lam, lam_next = self._lambda(a), self._lambda(a_next)
        h = lam_next - lam  # [B]
        d = x0
        if self._previous is not None:
            x0_prev, lam_prev = self._previous
            r = _b((lam - lam_prev) / h, x_t)
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        self._previous = (x0, lam)
        sigma, sigma_next = _b((1 - a).sqrt(), x_t), _b((1 - a_next).sqrt(), x_t)
        alpha_next = _b(a_next.sqrt(), x_t)
        prev = sigma_next / sigma.clamp(min=TINY) * x_t - alpha_next * torch.expm1(-_b(h, x_t)) * d
        return SamplerStep(prev, x0)


def build_sampler(
    config: SamplerConfig, schedule: NoiseSchedule, prediction: PredictionType
) -> Sampler:
    """The sampler `config` names over `schedule`, for a network of output `prediction`.
    Raises ConfigError on `steps` above the schedule's T (the config alone cannot check it)."""
    T = schedule.timesteps
    require(config.steps <= T, "steps", config.steps, f"an int <= the schedule's timesteps = {T}")
    if config.kind == "ddpm":
        return DdpmSampler(schedule, prediction, config.steps, config.spacing)
    if config.kind == "ddim":
        return DdimSampler(schedule, prediction, config.steps, config.eta, config.spacing)
    return DpmSolverPP2M(schedule, prediction, config.steps, config.spacing)


@torch.no_grad()
def sample(
    sampler: Sampler,
    denoise: Denoise,
    noise: Tensor,
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """From noise [B, ...] (x at the first visited step) to x0 [B, ...]: one network call per
    visited step, `on_step(i)` after each."""
    x = noise
    for index, t in enumerate(sampler.timesteps):
        steps = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        x = sampler.step(denoise(x, steps), index, x, generator).prev_sample
        if on_step is not None:
            on_step(index)
    return x
