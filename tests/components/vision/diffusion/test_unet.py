"""The latent diffusion UNet: shapes over configs, zero output at init, the timestep embedding,
gradient checkpointing against the unchecked model, conditioning by context and labels, padded
context tokens, and the errors on inputs the config does not take."""

from __future__ import annotations

import copy

import pytest
import torch

from components.config import ConfigError, build
from components.nn.positional import sinusoidal_table
from components.vision.diffusion import unet as unet_module
from components.vision.diffusion.unet import UNet, UNetConfig, timestep_embedding

SMALL = dict(base_channels=16, channel_mult=(1, 2), blocks_per_level=1, attention_levels=(1,),
             heads=2, groups=8)  # fmt: skip
CONTEXT_DIM = 12


def _config(**changes) -> UNetConfig:
    return UNetConfig(**(SMALL | changes))


def _randomise(model: torch.nn.Module, seed: int = 0) -> UNet:
    """Give every all-zero parameter (the zero-initialised output layers, norms' biases) random
    values, so every path of the untrained network reaches the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model  # type: ignore[return-value]


def _inputs(b: int = 2, h: int = 8, w: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, h, w, generator=gen)
    t = torch.randint(0, 1000, (b,), generator=gen)
    context = torch.randn(b, 5, CONTEXT_DIM, generator=gen)
    mask = torch.zeros(b, 5, dtype=torch.bool)
    mask[0, 3:] = True  # sample 0 has 3 tokens, sample 1 all 5
    return x, t, context, mask


CASES = {
    "unconditional": (dict(), dict()),
    "context": (dict(context_dim=CONTEXT_DIM), dict(context=True)),
    "context, linear attention": (
        dict(context_dim=CONTEXT_DIM, attention="linear", attention_levels=(0, 1)),
        dict(context=True),
    ),
    "labels": (dict(num_classes=3), dict(labels=True)),
    "context and labels, 3 levels, 2 blocks": (
        dict(
            context_dim=CONTEXT_DIM,
            num_classes=3,
            channel_mult=(1, 2, 2),
            attention_levels=(0, 2),
            blocks_per_level=2,
        ),
        dict(context=True, labels=True),
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_output_has_the_input_shape_and_is_zero_at_init(case):
    changes, conditions = CASES[case]
    torch.manual_seed(0)
    model = UNet(_config(**changes))
    x, t, context, mask = _inputs(h=8, w=16)
    kwargs: dict = {}
    if conditions.get("context"):
        kwargs |= dict(context=context, context_mask=mask)
    if conditions.get("labels"):
        kwargs["labels"] = torch.tensor([0, 3])  # 3 = the null label
    out = model(x, t, **kwargs)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))  # zero-initialised output conv
    out = _randomise(model)(x, t, **kwargs)
    assert out.shape == x.shape and out.abs().min() > 0 and torch.isfinite(out).all()


def test_a_scalar_t_is_one_step_for_the_whole_batch():
    model = _randomise(UNet(_config()))
    x, _, _, _ = _inputs()
    assert torch.equal(model(x, torch.tensor(7)), model(x, torch.tensor([7, 7])))


def test_timestep_embedding_is_the_sinusoidal_table_at_integer_steps():
    t = torch.tensor([0, 1, 17, 999])
    expected = sinusoidal_table(1000, 32)[t]
    assert torch.allclose(timestep_embedding(t, 32), expected, atol=1e-4)
    half = timestep_embedding(torch.tensor([0.5]), 32)  # a float t: (sin t, cos t) first
    assert half[0, :2].tolist() == pytest.approx([0.479426, 0.877583], abs=1e-6)


def test_default_sizes_are_pinned():
    assert sum(p.numel() for p in UNet(UNetConfig()).parameters()) == 5_589_636
    with_text = UNet(UNetConfig(context_dim=128))
    assert sum(p.numel() for p in with_text.parameters()) == 6_112_260


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_gradient_checkpointing_gives_the_unchecked_outputs_and_gradients(attention, monkeypatch):
    changes = dict(context_dim=CONTEXT_DIM, num_classes=3, attention=attention, dropout=0.1,
                   attention_levels=(0, 1))  # fmt: skip
    torch.manual_seed(0)
    plain = _randomise(UNet(_config(**changes)))
    checked = copy.deepcopy(plain)
    checked.config = _config(**changes, gradient_checkpointing=True)
    calls = []
    real = unet_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(type(args[0]).__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting)
    x, t, context, mask = _inputs()
    labels = torch.tensor([1, 3])
    results = []
    for model in (plain, checked):
        model.train()
        xg, cg = x.clone().requires_grad_(), context.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout masks for both
        out = model(xg, t, context=cg, context_mask=mask, labels=labels)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = [p.grad for p in model.parameters()]
        results.append((out.detach(), xg.grad, cg.grad, grads))
    # (ResBlock, SpatialTransformer) pairs: one per level down, two per level up; mid: 2 + 1
    assert calls.count("ResBlock") == 2 + 2 + 4 and calls.count("SpatialTransformer") == 2 + 1 + 4
    (out_a, gx_a, gc_a, grads_a), (out_b, gx_b, gc_b, grads_b) = results
    assert not torch.equal(out_a, plain.eval()(x, t, context, mask, labels))  # dropout was on
    assert torch.allclose(out_a, out_b, atol=1e-6)
    assert torch.allclose(gx_a, gx_b, atol=1e-6) and torch.allclose(gc_a, gc_b, atol=1e-6)
    assert all(g is not None and g.abs().sum() > 0 for g in grads_a)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-5)
    calls.clear()
    with torch.no_grad():
        checked(x, t, context=context, context_mask=mask, labels=labels)
    checked.eval()(x, t, context=context, context_mask=mask, labels=labels)
    assert calls == []  # nothing to recompute without a backward


def test_a_few_steps_make_the_output_depend_on_the_context():
    torch.manual_seed(0)
    model = UNet(_config(context_dim=CONTEXT_DIM))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, t, context, mask = _inputs()
    target = torch.randn_like(x)
    other = torch.randn_like(context)

    def gap() -> float:
        with torch.no_grad():
            return (model(x, t, context, mask) - model(x, t, other, mask)).abs().max().item()

    assert gap() == 0.0  # the zero-initialised network ignores everything
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, context, mask), target).backward()
        optimizer.step()
    assert gap() > 1e-3


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_padded_context_tokens_change_nothing(attention):
    model = _randomise(UNet(_config(context_dim=CONTEXT_DIM, attention=attention)))
    x, t, context, mask = _inputs()
    out = model(x, t, context, mask)
    changed = context.clone()
    changed[mask] = torch.randn(int(mask.sum()), CONTEXT_DIM) * 100
    assert torch.allclose(model(x, t, changed, mask), out, atol=1e-5)
    changed[0, 0] += 1.0  # a real token of sample 0: its output moves, sample 1's does not
    moved = model(x, t, changed, mask)
    assert (moved[0] - out[0]).abs().max() > 1e-4
    assert torch.allclose(moved[1], out[1], atol=1e-6)
    unmasked = model(x, t, context)  # no mask: the padded entries are real tokens
    assert (unmasked[0] - out[0]).abs().max() > 1e-4


def test_labels_condition_the_output():
    model = _randomise(UNet(_config(num_classes=3)))
    x, t, _, _ = _inputs()
    a = model(x, t, labels=torch.tensor([0, 0]))
    b = model(x, t, labels=torch.tensor([2, 3]))
    assert (a - b).abs().amin(dim=(1, 2, 3)).gt(0).all()


def test_conditions_the_config_lacks_or_needs_are_refused():
    x, t, context, mask = _inputs()
    labels = torch.tensor([0, 1])
    plain = UNet(_config())
    with pytest.raises(ValueError, match="no cross-attention"):
        plain(x, t, context)
    with pytest.raises(ValueError, match="no cross-attention"):
        plain(x, t, context_mask=mask)
    with pytest.raises(ValueError, match="no class labels"):
        plain(x, t, labels=labels)
    text = UNet(_config(context_dim=CONTEXT_DIM))
    with pytest.raises(ValueError, match=r"text-conditioned \(context_dim = 12\): pass context"):
        text(x, t)
    with pytest.raises(ValueError, match=r"context of shape \[2, 5, 7\]: expected \[2, L, 12\]"):
        text(x, t, torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="context_mask torch.int64"):
        text(x, t, context, mask.long())
    classes = UNet(_config(num_classes=3))
    with pytest.raises(ValueError, match=r"class-conditioned \(num_classes = 3\)"):
        classes(x, t)
    with pytest.raises(ValueError, match=r"labels torch.float32 \[2\]"):
        classes(x, t, labels=labels.float())


def test_inputs_of_the_wrong_shape_are_refused():
    model = UNet(_config(channel_mult=(1, 2, 2)))  # f = 4
    x, t, _, _ = _inputs(h=8, w=12)
    assert model(x, t).shape == x.shape
    with pytest.raises(ValueError, match=r"x of shape \[2, 4, 8, 10\]: H = 8 and W = 10 must be "
                                         r"multiples of 4"):  # fmt: skip
        model(torch.randn(2, 4, 8, 10), t)
    with pytest.raises(ValueError, match=r"x of shape \[2, 3, 8, 8\]: expected \[B, 4, H, W\]"):
        model(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match=r"t of shape \[3\]: expected \[2\]"):
        model(x, torch.tensor([1, 2, 3]))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        (dict(attention_levels=(2,)), "attention_levels"),
        (dict(attention_levels=(1, 1)), "attention_levels"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(channel_mult=(1, 0)), "channel_mult"),
        (dict(groups=6), "groups"),
        (dict(heads=3), "heads"),
        (
            dict(
                base_channels=8,
                groups=1,
                heads=1,
                channel_mult=(1,),
                attention_levels=(),
                in_channels=0,
            ),
            "in_channels",
        ),  # fmt: skip
        (dict(base_channels=9, groups=1, heads=1), "base_channels"),
        (dict(context_dim=0), "context_dim"),
        (dict(num_classes=0), "num_classes"),
        (dict(dropout=1.0), "dropout"),
        (dict(blocks_per_level=0), "blocks_per_level"),
    ],
)
def test_config_checks_name_the_key(changes, key):
    with pytest.raises(ConfigError) as err:
        _config(**changes)
    assert err.value.key == key


def test_config_builds_from_params_yaml_lists():
    config = build(UNetConfig, {"channel_mult": [1, 2, 4], "attention_levels": [2], "groups": 8})
    assert config.channel_mult == (1, 2, 4) and config.attention_levels == (2,)
    assert config.downsample == 4 and config.time_embed_dim == 256
    with pytest.raises(ConfigError, match=r"unet.attention_levels = \(3,\)"):
        build(UNetConfig, {"attention_levels": [3]}, where="unet")
