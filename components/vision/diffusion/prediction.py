"""What the network predicts, and the conversions between its output and (x0, ε).

With a = ᾱ_t and x_t = √a x0 + √(1-a) ε:

    eps   output ε̂                 x0 = (x_t - √(1-a) ε̂) / √a
    x0    output x̂0                ε  = (x_t - √a x̂0) / √(1-a)
    v     output v̂ = √a ε - √(1-a) x0 (Salimans & Ho 2022)
                                    x0 = √a x_t - √(1-a) v̂,   ε = √(1-a) x_t + √a v̂

ε-prediction cannot give x0 where a = 0 (zero terminal SNR): √a is floored at `MIN_ROOT` there,
so x0 stays finite (and large) rather than inf; use v or x0 prediction with such a schedule.

Min-SNR-γ loss weighting (Hang et al. 2023) caps each step's weight at SNR γ in x0-space and
re-expresses it for the loss actually computed. The MSE in ε-space is SNR times the MSE in
x0-space, and the MSE in v-space is (SNR + 1) times it, so the weights are

    x0:   min(SNR, γ)
    eps:  min(SNR, γ) / SNR
    v:    min(SNR, γ) / (SNR + 1)

(using the ε formula for v-prediction is the known pitfall: it over-weights the noisy steps).
At SNR = 0 the ε weight's limit is 1 and the v weight is 0 (min(0, γ) / 1); at SNR = inf
(t = -1, never trained on) x0 and eps take γ and 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

PredictionType = Literal["eps", "v", "x0"]
Weighting = Literal["uniform", "min_snr"]
PREDICTIONS = ("eps", "v", "x0")
MIN_ROOT = 1e-4  # floor of √ᾱ and √(1-ᾱ) where a conversion divides by them


def _check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction type {prediction!r}: expected one of {'|'.join(PREDICTIONS)}")


def _roots(alpha_bar: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """√a and √(1-a), a [B] (or a scalar) -> [B, 1, ...] against `like` [B, ...].

    Computed in the wider of a's and like's dtypes, and at least float32, then cast to like's:
    1 - a in bfloat16 would round ᾱ_0 = 0.99915 to 1 (noise-free), and a float32 ᾱ must not
    promote half-precision latents."""
    a = alpha_bar.reshape(-1, *([1] * (like.ndim - 1)))
    a = a.to(torch.promote_types(torch.promote_types(a.dtype, like.dtype), torch.float32))
    return a.sqrt().to(like.dtype), (1 - a).clamp(min=0).sqrt().to(like.dtype)


def target(prediction: PredictionType, x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """What the network learns to output: ε, v = √a ε - √(1-a) x0, or x0. [B, ...]"""
    _check(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    root_a, root_1ma = _roots(alpha_bar, x0)
    return root_a * noise - root_1ma * x0


def to_x0_eps(
    prediction: PredictionType, output: Tensor, x_t: Tensor, alpha_bar: Tensor
) -> tuple[Tensor, Tensor]:
    """The network's output at x_t [B, ...] (ᾱ [B]) -> (x̂0, ε̂), each [B, ...]."""
    _check(prediction)
    root_a, root_1ma = _roots(alpha_bar, x_t)
    if prediction == "eps":
        return (x_t - root_1ma * output) / root_a.clamp(min=MIN_ROOT), output
    if prediction == "x0":
        return output, (x_t - root_a * output) / root_1ma.clamp(min=MIN_ROOT)
    return root_a * x_t - root_1ma * output, root_1ma * x_t + root_a * output


def from_x0_eps(prediction: PredictionType, x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """(x0, ε) -> the output a perfect network of this prediction type would give."""
    return target(prediction, x0, eps, alpha_bar)


def loss_weight(
    prediction: PredictionType, snr: Tensor, weighting: Weighting = "uniform", gamma: float = 5.0
) -> Tensor:
    """Per-sample weight [B] of the MSE for SNR(t) [B] (see the module docstring).

    >>> loss_weight("v", torch.tensor([0.0, 1.0, 9.0]), "min_snr", gamma=5.0)
    tensor([0.0000, 0.5000, 0.5000])
    """
    _check(prediction)
    if weighting not in ("uniform", "min_snr"):
        raise ValueError(f"weighting {weighting!r}: expected one of uniform|min_snr")
    if weighting == "uniform":
        return torch.ones_like(snr)
    capped = snr.clamp(max=gamma)
    if prediction == "x0":
        return capped
    if prediction == "v":
        return capped / (snr + 1)  # 0 at SNR 0 and at SNR inf
    # eps: min(SNR, γ) / SNR, whose limit at SNR -> 0 is 1 (capped = SNR there): the division
    # is made only where SNR > 0, so no 0/0 is ever formed.
    positive = snr > 0
    return torch.where(positive, capped / torch.where(positive, snr, 1.0), 1.0)
