import math

import pytest
import torch

from components.config import ConfigError, build
from components.vision.diffusion.schedule import NoiseSchedule, ScheduleConfig

KINDS = ["linear", "scaled_linear", "cosine"]


def _schedule(**changes) -> NoiseSchedule:
    return NoiseSchedule(build(ScheduleConfig, changes))


def test_linear_and_scaled_linear_alpha_bar_match_their_closed_forms():
    linear = _schedule(kind="linear", beta_start=1e-4, beta_end=0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(linear.alphas_cumprod, torch.cumprod(1 - betas, 0).float())
    assert linear.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # DDPM's ᾱ_T
    scaled = _schedule(kind="scaled_linear")
    root = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64)
    assert torch.allclose(scaled.alphas_cumprod, torch.cumprod(1 - root**2, 0).float())
    assert scaled.alphas_cumprod[-1].item() == pytest.approx(0.0047, rel=0.01)  # SD's
    assert scaled.betas[0].item() == pytest.approx(0.00085)
    assert scaled.betas[-1].item() == pytest.approx(0.012)


def test_cosine_alpha_bar_is_the_squared_cosine_where_betas_are_not_clipped():
    s, T = 0.008, 1000
    schedule = _schedule(kind="cosine", timesteps=T, cosine_s=s)

    def f(u: float) -> float:
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900, 990):
        assert schedule.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-5)
    assert schedule.betas.max().item() == pytest.approx(0.999)  # the clip, at the last step
    assert (schedule.betas[:-1] < 0.999).all()
    # where β is clipped, ᾱ is the clipped betas' product, not f/f(0) (= 0 at the end)
    assert schedule.alphas_cumprod[-1].item() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_tables_agree_with_each_other(kind):
    for zero in (False, True):
        schedule = _schedule(kind=kind, zero_terminal_snr=zero)
        a = schedule.alphas_cumprod.double()
        assert torch.allclose(schedule.alphas, 1 - schedule.betas)
        assert torch.allclose(torch.cumprod(schedule.alphas.double(), 0), a, atol=1e-6)
        assert ((schedule.betas > 0) & (schedule.betas <= 1)).all()
        assert schedule.alphas_cumprod.dtype == torch.float32
        assert schedule.alphas_cumprod.shape == (1000,)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_terminal_snr_ends_at_pure_noise_and_keeps_the_first_step(kind):
    plain, zero = _schedule(kind=kind), _schedule(kind=kind, zero_terminal_snr=True)
    assert zero.alphas_cumprod[-1].item() == 0.0
    assert zero.betas[-1].item() == 1.0
    assert zero.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-6)
    assert (zero.alphas_cumprod.diff() < 0).all()  # still decreasing
    assert zero.snr(torch.tensor([999])).item() == 0.0
    # Lin et al.'s rescale is linear in √ᾱ: check it at a middle step
    root, root_0, root_T = (plain.alphas_cumprod.double()[i].sqrt() for i in (500, 0, -1))
    expected = ((root - root_T) * root_0 / (root_0 - root_T)) ** 2
    assert zero.alphas_cumprod[500].item() == pytest.approx(expected.item(), rel=1e-5)


def test_alpha_bar_at_minus_one_is_one_and_snr_is_its_ratio():
    schedule = _schedule()
    t = torch.tensor([-1, 0, 999, 500])
    a = schedule.alpha_bar(t)
    assert a.dtype == torch.float32 and a.shape == (4,)
    assert a[0].item() == 1.0 and a[1].item() == schedule.alphas_cumprod[0].item()
    assert a[2].item() == schedule.alphas_cumprod[999].item()
    snr = schedule.snr(t)
    assert torch.isinf(snr[0])
    assert torch.allclose(snr[1:], a[1:] / (1 - a[1:]))


def test_add_noise_is_the_forward_process_per_sample():
    schedule = _schedule()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(3, 4, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    x_t = schedule.add_noise(x0, noise, t)
    assert x_t.dtype == torch.float64 and x_t.shape == x0.shape
    for b in range(3):
        a = schedule.alphas_cumprod[t[b]].double()
        assert torch.allclose(x_t[b], a.sqrt() * x0[b] + (1 - a).sqrt() * noise[b])


def test_add_noise_in_bfloat16_keeps_the_first_steps_noise():
    # 1 - ᾱ_0 = 0.00085: in bfloat16 ᾱ_0 rounds to 1, so roots taken there would drop the noise
    schedule = _schedule()
    x0, noise = torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16), torch.ones(1, 1, 2, 2)
    x_t = schedule.add_noise(x0, noise.bfloat16(), torch.tensor([0]))
    assert x_t.dtype == torch.bfloat16
    assert x_t.float().mean().item() == pytest.approx(math.sqrt(0.00085), rel=0.01)


def test_offset_noise_adds_a_constant_per_image_and_channel():
    x0 = torch.zeros(256, 2, 8, 8)
    plain = _schedule().sample_noise(x0, torch.Generator().manual_seed(0))
    offset = _schedule(offset_noise=0.5).sample_noise(x0, torch.Generator().manual_seed(0))
    assert plain.shape == offset.shape == x0.shape
    channel_means = lambda n: n.mean(dim=(2, 3)).std().item()  # noqa: E731
    assert channel_means(plain) == pytest.approx(1 / 8, rel=0.15)  # std of a mean of 64
    assert channel_means(offset) == pytest.approx(math.sqrt(1 / 64 + 0.25), rel=0.15)
    # the offset is the same over a channel's pixels: what is left is the plain noise
    residual = offset - offset.mean(dim=(2, 3), keepdim=True)
    assert residual.std().item() == pytest.approx(1.0, rel=0.05)


def test_sample_noise_follows_the_dtype_and_the_generator():
    schedule = _schedule()
    like = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    a = schedule.sample_noise(like, torch.Generator().manual_seed(3))
    b = schedule.sample_noise(like, torch.Generator().manual_seed(3))
    assert a.dtype == torch.float64 and torch.equal(a, b)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"kind = 'quadratic': expected one of .'linear'"):
        build(ScheduleConfig, {"kind": "quadratic"})
    with pytest.raises(ConfigError, match="kind = 'quadratic': expected one of linear|scaled"):
        ScheduleConfig(kind="quadratic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timesteps = 1: expected an int >= 2"):
        build(ScheduleConfig, {"timesteps": 1})
    with pytest.raises(ConfigError, match="beta_end = 0.01: expected a float >= beta_start"):
        build(ScheduleConfig, {"beta_start": 0.1, "beta_end": 0.01})
    with pytest.raises(ConfigError, match="beta_start = 0.0"):
        build(ScheduleConfig, {"beta_start": 0.0})
    with pytest.raises(ConfigError, match="offset_noise = -0.1"):
        build(ScheduleConfig, {"offset_noise": -0.1})
    with pytest.raises(ConfigError, match="cosine_s = -1"):
        build(ScheduleConfig, {"cosine_s": -1.0})
