import math

import pytest
import torch

from components.vision.diffusion import prediction
from components.vision.diffusion.schedule import NoiseSchedule, ScheduleConfig

TYPES = ["eps", "v", "x0"]


def _data(seed: int = 0, b: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x0, ε [B, 2, 3, 3] and ᾱ [B] uniform in (0, 1), float64."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 2, 3, 3, generator=generator, dtype=torch.float64)
    noise = torch.randn(b, 2, 3, 3, generator=generator, dtype=torch.float64)
    a = torch.rand(b, generator=generator, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    return x0, noise, a


def _x_t(x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    a = a.reshape(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@pytest.mark.parametrize("kind", TYPES)
def test_the_exact_target_converts_back_to_x0_and_noise(kind):
    x0, noise, a = _data()
    x_t = _x_t(x0, noise, a)
    output = prediction.target(kind, x0, noise, a)
    x0_hat, eps_hat = prediction.to_x0_eps(kind, output, x_t, a)
    assert torch.allclose(x0_hat, x0, atol=1e-9) and torch.allclose(eps_hat, noise, atol=1e-9)


@pytest.mark.parametrize("kind", TYPES)
def test_conversions_round_trip_for_any_output(kind):
    """Not only a perfect network's: any output maps to one consistent (x̂0, ε̂) and back."""
    x0, noise, a = _data(1)
    x_t = _x_t(x0, noise, a)
    output = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=x0.dtype)
    x0_hat, eps_hat = prediction.to_x0_eps(kind, output, x_t, a)
    assert torch.allclose(_x_t(x0_hat, eps_hat, a), x_t, atol=1e-9)  # consistent with x_t
    assert torch.allclose(prediction.from_x0_eps(kind, x0_hat, eps_hat, a), output, atol=1e-9)


def test_v_is_its_closed_form_and_converts_by_hand():
    a = torch.tensor([0.3], dtype=torch.float64)
    x0, eps = torch.full((1, 2), 2.0, dtype=torch.float64), torch.full((1, 2), -1.0).double()
    v = prediction.target("v", x0, eps, a)
    expected = math.sqrt(0.3) * -1.0 - math.sqrt(0.7) * 2.0
    assert torch.allclose(v, torch.full((1, 2), expected, dtype=torch.float64))
    x_t = math.sqrt(0.3) * x0 + math.sqrt(0.7) * eps
    x0_hat, eps_hat = prediction.to_x0_eps("v", v, x_t, a)
    assert torch.allclose(x0_hat, math.sqrt(0.3) * x_t - math.sqrt(0.7) * v)
    assert torch.allclose(eps_hat, math.sqrt(0.7) * x_t + math.sqrt(0.3) * v)
    assert prediction.target("eps", x0, eps, a) is eps and prediction.target("x0", x0, eps, a) is x0


def test_targets_from_a_schedule_follow_the_latents_dtype():
    schedule = NoiseSchedule(ScheduleConfig())
    t = torch.tensor([0, 999])
    a = schedule.alpha_bar(t)  # float32
    x0, noise = torch.ones(2, 1, 2, 2, dtype=torch.bfloat16), torch.ones(2, 1, 2, 2).bfloat16()
    v = prediction.target("v", x0, noise, a)
    assert v.dtype == torch.bfloat16
    expected = a.sqrt() - (1 - a).sqrt()
    assert torch.allclose(v[:, 0, 0, 0].float(), expected, rtol=1e-2)


def test_eps_prediction_at_zero_snr_stays_finite():
    # ᾱ = 0: x_t is pure noise, ε̂ = x_t is all an eps-network can say; x̂0 = (x_t - ε̂) / √ᾱ is
    # 0/0, floored to a finite value (exactly 0 here)
    x_t = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    a = torch.zeros(2)
    x0_hat, eps_hat = prediction.to_x0_eps("eps", x_t, x_t, a)
    assert torch.equal(eps_hat, x_t) and torch.equal(x0_hat, torch.zeros_like(x_t))
    off, _ = prediction.to_x0_eps("eps", x_t + 1e-3, x_t, a)
    assert torch.isfinite(off).all() and off.abs().max().item() == pytest.approx(10.0, rel=1e-3)
    for kind in ("v", "x0"):  # v and x0 need no division at ᾱ = 0
        x0_hat, eps_hat = prediction.to_x0_eps(kind, torch.ones_like(x_t), x_t, a)
        assert torch.isfinite(x0_hat).all() and torch.allclose(eps_hat, x_t)


def test_min_snr_weights_equal_their_formula_per_prediction_type():
    gamma = 5.0
    snr = torch.tensor([0.01, 0.5, 1.0, 4.9, 5.0, 20.0, 1e4])
    capped = torch.minimum(snr, torch.tensor(gamma))
    expected = {"x0": capped, "eps": capped / snr, "v": capped / (snr + 1)}
    for kind in TYPES:
        weight = prediction.loss_weight(kind, snr, "min_snr", gamma)
        assert torch.allclose(weight, expected[kind]), kind
    # the pitfall: v with the eps formula would weight snr 0.5 by 1, not 1/3
    v = prediction.loss_weight("v", torch.tensor([0.5]), "min_snr", gamma)
    assert v.item() == pytest.approx(0.5 / 1.5)
    gamma_1 = prediction.loss_weight("eps", torch.tensor([4.0]), "min_snr", gamma=1.0)
    assert gamma_1.item() == pytest.approx(0.25)


def test_min_snr_weights_at_zero_and_infinite_snr_are_their_limits():
    snr = torch.tensor([0.0, math.inf])
    x0, eps, v = (prediction.loss_weight(k, snr, "min_snr", 5.0) for k in ("x0", "eps", "v"))
    assert x0.tolist() == [0.0, 5.0]
    assert eps.tolist() == [1.0, 0.0]  # min(snr, γ) / snr -> 1 at snr -> 0
    assert v.tolist() == [0.0, 0.0]


def test_uniform_weights_are_ones():
    snr = torch.tensor([0.0, 0.5, math.inf])
    for kind in TYPES:
        assert torch.equal(prediction.loss_weight(kind, snr, "uniform"), torch.ones(3))


def test_unknown_names_raise_naming_the_value_and_the_choices():
    zeros = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="prediction type 'score': expected one of eps|v|x0"):
        prediction.target("score", zeros, zeros, torch.ones(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prediction type 'score'"):
        prediction.to_x0_eps("score", zeros, zeros, torch.ones(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prediction type 'score'"):
        prediction.loss_weight("score", torch.ones(1), "uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weighting 'p2': expected one of uniform|min_snr"):
        prediction.loss_weight("eps", torch.ones(1), "p2")  # type: ignore[arg-type]
