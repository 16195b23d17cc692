"""Samplers on a model whose answer is known: data x0 ~ N(m, s² I). With a = ᾱ_t the marginal
is x_t ~ N(√a m, (a s² + 1 - a) I), and the best (MSE) predictions are in closed form,

    E[x0 | x_t] = m + √a s² (x_t - √a m) / (a s² + 1 - a)
    E[ε | x_t]  = √(1-a) (x_t - √a m) / (a s² + 1 - a)

(finite at ᾱ = 0, zero terminal SNR). The deterministic samplers integrate the probability-flow
ODE, which for this data keeps each coordinate's z = (x_t - √a m) / √(a s² + 1 - a): from x_T
it ends exactly at m + s z_T, the reference the step counts are measured against."""

import pytest
import torch

from components.config import ConfigError, build
from components.vision.diffusion.samplers import (
    DdimSampler,
    DdpmSampler,
    DpmSolverPP2M,
    SamplerConfig,
    SamplerStep,
    build_sampler,
    sample,
    spaced_timesteps,
)
from components.vision.diffusion.schedule import NoiseSchedule, ScheduleConfig

MEAN, STD = 0.5, 0.8
TYPES = ["eps", "v", "x0"]


def gaussian_denoiser(schedule: NoiseSchedule, kind: str = "eps"):
    """The exact network of prediction `kind` for N(MEAN, STD²) data, (x_t, t) -> output."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = schedule.alpha_bar(t).reshape(-1, 1, 1, 1).double()
        x = x_t.double()
        variance = a * STD**2 + 1 - a
        x0 = MEAN + a.sqrt() * STD**2 * (x - a.sqrt() * MEAN) / variance
        eps = (1 - a).sqrt() * (x - a.sqrt() * MEAN) / variance
        out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[kind]
        return out.to(x_t.dtype)

    return denoise


def flow_endpoint(schedule: NoiseSchedule, x_T: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE from x_T at t = T-1 ends (module docstring)."""
    a = schedule.alphas_cumprod[-1].double()
    return MEAN + STD * (x_T - a.sqrt() * MEAN) / (a * STD**2 + 1 - a).sqrt()


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig(kind="linear", beta_start=1e-4, beta_end=0.02))


def _noise(n: int = 512, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 2, 2, generator=generator, dtype=torch.float64)


def _run(schedule, kind: str, steps: int, prediction: str = "eps", **options) -> torch.Tensor:
    sampler = build_sampler(SamplerConfig(kind, steps, **options), schedule, prediction)
    return sample(sampler, gaussian_denoiser(schedule, prediction), _noise())


def test_timestep_spacings():
    assert spaced_timesteps(1000, 4) == [999, 749, 499, 249]
    assert spaced_timesteps(1000, 3) == [999, 666, 332]  # round(1000 - i·333.3) - 1
    assert spaced_timesteps(10, 10) == list(range(9, -1, -1))
    assert spaced_timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    assert spaced_timesteps(10, 10, "leading") == list(range(9, -1, -1))
    assert spaced_timesteps(1000, 1) == [999]
    with pytest.raises(ConfigError, match=r"steps = 11: expected an int in \[1, 10\]"):
        spaced_timesteps(10, 11)


def test_ddim_with_eta_0_is_deterministic_and_draws_the_data_distribution(schedule):
    sampler = build_sampler(SamplerConfig("ddim", 50), schedule, "eps")
    calls = []
    a = sample(sampler, gaussian_denoiser(schedule), _noise(), on_step=calls.append)
    b = sample(sampler, gaussian_denoiser(schedule), _noise())  # no generator either time
    assert torch.equal(a, b)
    assert calls == list(range(50))
    assert a.mean().item() == pytest.approx(MEAN, abs=0.05)
    assert a.std().item() == pytest.approx(STD, rel=0.05)


@pytest.mark.parametrize("prediction", TYPES)
@pytest.mark.parametrize("steps", [1000, 20])
def test_ddim_with_eta_1_is_ddpms_step(schedule, prediction, steps):
    """η = 1: the same posterior mean and variance, so the same draw from the same z."""
    ddpm = DdpmSampler(schedule, prediction, steps)
    ddim = DdimSampler(schedule, prediction, steps, eta=1.0)
    x_t = _noise(64)
    for index in (0, steps // 3, steps - 1):
        t = torch.full((64,), ddpm.timesteps[index])
        output = gaussian_denoiser(schedule, prediction)(x_t, t)
        step_ddpm = ddpm.step(output, index, x_t, torch.Generator().manual_seed(1))
        step_ddim = ddim.step(output, index, x_t, torch.Generator().manual_seed(1))
        assert torch.allclose(step_ddpm.prev_sample, step_ddim.prev_sample, atol=1e-9)
        assert torch.allclose(step_ddpm.pred_x0, step_ddim.pred_x0)


def test_ddpm_step_is_the_closed_form_posterior(schedule):
    """x_{t-1} = μ̃(x_t, x̂0) + √β̃ z with the textbook coefficients (Ho et al. eq. 7)."""
    ddpm = DdpmSampler(schedule, "x0", 1000)
    x_t, x0 = _noise(8), torch.full((8, 1, 2, 2), 0.7, dtype=torch.float64)
    index = 499
    t = ddpm.timesteps[index]
    assert t == 500
    a, a_prev = (schedule.alphas_cumprod[i].double() for i in (t, t - 1))
    beta = schedule.betas[t].double()
    mean = a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x_t
    variance = beta * (1 - a_prev) / (1 - a)
    step = ddpm.step(x0, index, x_t, torch.Generator().manual_seed(5))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5), dtype=x_t.dtype)
    assert isinstance(step, SamplerStep) and torch.equal(step.pred_x0, x0)
    assert torch.allclose(step.prev_sample, mean + variance.sqrt() * z, atol=1e-6)


def test_strided_ddpm_takes_its_variance_from_the_visited_steps(schedule):
    ddpm = DdpmSampler(schedule, "x0", 10)
    index = 5
    t, t_next = ddpm.timesteps[index], ddpm.timesteps[index + 1]
    assert (t, t_next) == (499, 399)
    a, a_next = (schedule.alphas_cumprod[i].double() for i in (t, t_next))
    beta = 1 - a / a_next  # the strided step's β, not schedule.betas[t]
    x_t, x0 = _noise(8), torch.full((8, 1, 2, 2), -0.3, dtype=torch.float64)
    mean = a_next.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_next) / (1 - a) * x_t
    variance = beta * (1 - a_next) / (1 - a)
    step = ddpm.step(x0, index, x_t, torch.Generator().manual_seed(6))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(6), dtype=x_t.dtype)
    assert torch.allclose(step.prev_sample, mean + variance.sqrt() * z, atol=1e-6)
    last = ddpm.step(x0, 9, x_t, torch.Generator().manual_seed(6))
    assert torch.allclose(last.prev_sample, x0)  # no noise at the last step: it lands on x̂0


def test_ddpm_draws_the_data_distribution(schedule):
    # all T steps: over a strided subset β̃ (the posterior's variance given x0) is too small
    # for the uncertain x̂0 (Nichol & Dhariwal 2021), and the samples come out narrower
    sampler = build_sampler(SamplerConfig("ddpm", 1000), schedule, "eps")
    x = sample(sampler, gaussian_denoiser(schedule), _noise(), torch.Generator().manual_seed(2))
    assert x.mean().item() == pytest.approx(MEAN, abs=0.06)
    assert x.std().item() == pytest.approx(STD, rel=0.06)


def test_dpm_solver_first_step_is_ddims(schedule):
    """First order DPM-Solver++ is DDIM (Lu et al. 2022): they differ from the second step on."""
    dpm = DpmSolverPP2M(schedule, "v", 20)
    ddim = DdimSampler(schedule, "v", 20)
    denoise = gaussian_denoiser(schedule, "v")
    x = _noise(16)
    t = torch.full((16,), dpm.timesteps[0])
    first_dpm, first_ddim = dpm.step(denoise(x, t), 0, x), ddim.step(denoise(x, t), 0, x)
    assert torch.allclose(first_dpm.prev_sample, first_ddim.prev_sample, atol=1e-9)
    x = first_dpm.prev_sample
    t = torch.full((16,), dpm.timesteps[1])
    second_dpm, second_ddim = dpm.step(denoise(x, t), 1, x), ddim.step(denoise(x, t), 1, x)
    assert (second_dpm.prev_sample - second_ddim.prev_sample).abs().max().item() > 1e-6


@pytest.mark.parametrize("prediction", TYPES)
def test_fast_sampler_at_20_steps_lands_near_ddim_at_200(schedule, prediction):
    exact = flow_endpoint(schedule, _noise())
    ddim_200 = _run(schedule, "ddim", 200, prediction)
    ddim_20 = _run(schedule, "ddim", 20, prediction)
    fast = _run(schedule, "dpmpp_2m", 20, prediction)

    def error(x: torch.Tensor) -> float:
        return (x - exact).abs().mean().item()

    # measured: DDIM 0.0629 at 20 steps, 0.0066 at 200 (first order: 10x the steps, 1/10 the
    # error); DPM-Solver++(2M) 0.0037 at 20, and 0.0029 from DDIM at 200
    assert (fast - ddim_200).abs().mean().item() < 0.005
    assert error(fast) < 0.005
    assert error(ddim_200) == pytest.approx(error(ddim_20) / 10, rel=0.2)
    assert fast.mean().item() == pytest.approx(MEAN, abs=0.05)
    assert fast.std().item() == pytest.approx(STD, rel=0.03)


def test_dpm_solver_restarts_its_history_for_every_loop(schedule):
    sampler = build_sampler(SamplerConfig("dpmpp_2m", 20), schedule, "eps")
    denoise = gaussian_denoiser(schedule)
    first = sample(sampler, denoise, _noise(64, seed=1))
    sample(sampler, denoise, _noise(64, seed=2))
    assert torch.equal(sample(sampler, denoise, _noise(64, seed=1)), first)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpmpp_2m"])
def test_every_sampler_gives_the_same_for_every_prediction_type(schedule, kind):
    runs = []
    for prediction in TYPES:
        sampler = build_sampler(SamplerConfig(kind, 10), schedule, prediction)
        denoise = gaussian_denoiser(schedule, prediction)
        runs.append(sample(sampler, denoise, _noise(64), torch.Generator().manual_seed(3)))
    assert torch.allclose(runs[0], runs[1], atol=1e-9) and torch.allclose(runs[0], runs[2])


@pytest.fixture(scope="module")
def zero_snr() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig(kind="scaled_linear", zero_terminal_snr=True))


@pytest.mark.parametrize(("kind", "tolerance"), [("ddim", 0.06), ("dpmpp_2m", 0.025)])
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_samplers_follow_the_flow_under_zero_terminal_snr(zero_snr, kind, tolerance, prediction):
    x = _run(zero_snr, kind, 25, prediction)
    assert torch.isfinite(x).all()
    # measured: DDIM 0.046, DPM-Solver++(2M) 0.017 from the exact endpoint at 25 steps; both
    # narrower than the data, the last step jumping from t = 39 onto x̂0 = E[x0 | x_39]
    assert (x - flow_endpoint(zero_snr, _noise())).abs().mean().item() < tolerance
    assert x.mean().item() == pytest.approx(MEAN, abs=0.05)


def test_ddpm_draws_the_data_distribution_under_zero_terminal_snr(zero_snr):
    sampler = build_sampler(SamplerConfig("ddpm", 1000), zero_snr, "v")
    x = sample(
        sampler, gaussian_denoiser(zero_snr, "v"), _noise(), torch.Generator().manual_seed(4)
    )
    assert x.mean().item() == pytest.approx(MEAN, abs=0.06)
    assert x.std().item() == pytest.approx(STD, rel=0.06)


def test_only_eps_prediction_loses_the_mean_at_pure_noise(zero_snr):
    """At ᾱ = 0, E[x0 | x_T] = m: v and x0 networks can say so, an eps network cannot (its
    best output is ε̂ = x_T, and x̂0 = (x_T - ε̂) / √ᾱ is floored to 0): Lin et al.'s reason
    for v-prediction with zero terminal SNR."""
    x_T = _noise(8)
    t = torch.full((8,), zero_snr.timesteps - 1)
    for prediction, expected in (("v", MEAN), ("x0", MEAN), ("eps", 0.0)):
        sampler = DdimSampler(zero_snr, prediction, 25)  # type: ignore[arg-type]
        step = sampler.step(gaussian_denoiser(zero_snr, prediction)(x_T, t), 0, x_T)
        assert torch.allclose(step.pred_x0, torch.full_like(x_T, expected)), prediction


def test_float32_sampling_follows_float64(schedule):
    x64 = _run(schedule, "dpmpp_2m", 20)
    sampler = build_sampler(SamplerConfig("dpmpp_2m", 20), schedule, "eps")
    x32 = sample(sampler, gaussian_denoiser(schedule), _noise().float())
    assert x32.dtype == torch.float32
    assert torch.allclose(x32.double(), x64, atol=1e-4)


def test_sampler_config_errors_name_the_key(schedule):
    with pytest.raises(ConfigError, match=r"kind = 'euler': expected one of .'ddpm'"):
        build(SamplerConfig, {"kind": "euler"})
    with pytest.raises(ConfigError, match="kind = 'euler': expected one of ddpm|ddim"):
        SamplerConfig("euler")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="steps = 0: expected an int >= 1"):
        build(SamplerConfig, {"steps": 0})
    with pytest.raises(ConfigError, match="eta = -0.5: expected a float >= 0"):
        build(SamplerConfig, {"eta": -0.5})
    with pytest.raises(ConfigError, match="spacing = 'linspace'"):
        SamplerConfig(spacing="linspace")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="steps = 2000: expected an int <= .* timesteps = 1000"):
        build_sampler(SamplerConfig("ddim", 2000), schedule, "eps")
    with pytest.raises(ValueError, match="eta = -1"):
        DdimSampler(schedule, "eps", 10, eta=-1.0)
    with pytest.raises(ValueError, match="prediction type 'score'"):
        build_sampler(SamplerConfig("ddim", 2), schedule, "score")  # type: ignore[arg-type]
