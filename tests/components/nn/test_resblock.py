import pytest
import torch
import torch.nn.functional as F

from components.config import ConfigError, build
from components.nn.resblock import ResBlock, ResBlockConfig


def block(**overrides) -> ResBlock:
    torch.manual_seed(0)
    base = dict(in_channels=32, groups=8)
    return ResBlock(ResBlockConfig(**(base | overrides)))


def image(channels: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, channels, 6, 5, generator=torch.Generator().manual_seed(seed))


def cond(seed: int = 2) -> torch.Tensor:
    return torch.randn(2, 10, generator=torch.Generator().manual_seed(seed))


def test_shapes_with_and_without_a_channel_change():
    same = block()
    assert isinstance(same.skip, torch.nn.Identity)
    assert same(image()).shape == (2, 32, 6, 5)
    wider = block(out_channels=64, cond_dim=10)
    assert wider.skip.kernel_size == (1, 1) and wider.skip.out_channels == 64
    assert wider(image(), cond()).shape == (2, 64, 6, 5)
    assert wider.cond[1].out_features == 2 * 64  # a scale and a shift per output channel


def by_hand(res: ResBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The module docstring's formula from `res`'s weights (dropout as in `res.training`)."""
    cfg = res.config
    c_out = res.conv_in.out_channels

    def norm(t, gn):
        return F.group_norm(t, cfg.groups, gn.weight, gn.bias, eps=cfg.eps)

    h = F.conv2d(F.silu(norm(x, res.norm_in)), res.conv_in.weight, res.conv_in.bias, padding=1)
    scale_shift = F.linear(F.silu(c), res.cond[1].weight, res.cond[1].bias)  # [B, 2 · C_out]
    scale, shift = scale_shift[:, :c_out, None, None], scale_shift[:, c_out:, None, None]
    h = norm(h, res.norm_out) * (1 + scale) + shift
    h = F.dropout(F.silu(h), cfg.dropout, training=res.training)
    h = F.conv2d(h, res.conv_out.weight, res.conv_out.bias, padding=1)
    skip = x if cfg.out_channels is None else F.conv2d(x, res.skip.weight, res.skip.bias)
    return skip + h


@pytest.mark.parametrize("out_channels", [None, 64])
def test_the_formula_written_out(out_channels):
    res = block(out_channels=out_channels, cond_dim=10, zero_init=False).double().eval()
    x, c = image().double(), cond().double()
    got = res(x, c)
    torch.testing.assert_close(got, by_hand(res, x, c), rtol=1e-10, atol=1e-10)
    skip = x if out_channels is None else res.skip(x)
    assert (got - skip).abs().mean() > 0.05


def test_dropout_only_in_training_on_the_last_convs_input():
    res = block(cond_dim=10, zero_init=False, dropout=0.5).double()
    x, c = image().double(), cond().double()
    res.train()
    assert not torch.allclose(res(x, c), res(x, c))
    torch.manual_seed(3)
    got = res(x, c)
    torch.manual_seed(3)  # the same dropout mask: dropout is the only random draw
    torch.testing.assert_close(got, by_hand(res, x, c), rtol=1e-10, atol=1e-10)
    res.eval()
    torch.testing.assert_close(res(x, c), res(x, c), rtol=0, atol=0)


def test_the_condition_changes_the_output_per_sample():
    res = block(cond_dim=10, zero_init=False).eval()
    x = image()[:1].expand(2, -1, -1, -1)  # the same image twice
    c = cond()
    out = res(x, c)
    assert (out[0] - out[1]).abs().max() > 1e-2  # different conditions
    torch.testing.assert_close(res(x, c[:1].expand(2, -1)), out[:1].expand(2, -1, -1, -1))


@pytest.mark.parametrize("out_channels", [None, 64])
def test_zero_init_starts_as_the_skip_path(out_channels):
    res = block(out_channels=out_channels, cond_dim=10)  # zero_init is the default
    x = image().requires_grad_()
    out = res(x, cond())
    want = x if out_channels is None else res.skip(x)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    (out * torch.randn_like(out)).sum().backward()
    # Only the last conv (and the skip conv) learn in the first step; the rest follows after.
    assert res.conv_out.weight.grad.abs().sum() > 1e-2
    assert res.conv_in.weight.grad.abs().sum() == 0 and res.cond[1].weight.grad.abs().sum() == 0
    if out_channels is not None:
        assert res.skip.weight.grad.abs().sum() > 1e-2


@pytest.mark.parametrize("out_channels", [None, 64])
def test_gradients_reach_every_parameter_and_input(out_channels):
    res = block(out_channels=out_channels, cond_dim=10, zero_init=False, dropout=0.1).train()
    x, c = image().requires_grad_(), cond().requires_grad_()
    out = res(x, c)
    (out * torch.randn_like(out)).sum().backward()
    for name, t in [("x", x), ("cond", c), *res.named_parameters()]:
        assert torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 1e-3, name


def test_the_condition_is_required_exactly_when_configured():
    with pytest.raises(ValueError, match="takes a condition"):
        block(cond_dim=10)(image())
    with pytest.raises(ValueError, match="takes no condition"):
        block()(image(), cond())


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="in_channels = 30: expected a multiple of groups=32"):
        ResBlockConfig(in_channels=30)
    with pytest.raises(ConfigError, match="out_channels = 48: expected a multiple of groups=32"):
        ResBlockConfig(in_channels=64, out_channels=48)
    with pytest.raises(ConfigError, match="unet.res.cond_dim = 0"):
        build(ResBlockConfig, {"in_channels": 64, "cond_dim": 0}, where="unet.res")
    with pytest.raises(ConfigError, match="dropout"):
        ResBlockConfig(in_channels=32, dropout=1.0)
    cfg = build(ResBlockConfig, {"in_channels": 64, "out_channels": 128, "cond_dim": 512})
    assert (cfg.in_channels, cfg.out_channels, cfg.cond_dim, cfg.groups) == (64, 128, 512, 32)
    assert cfg.zero_init is True
