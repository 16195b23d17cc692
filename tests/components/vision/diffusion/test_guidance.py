import math
from dataclasses import dataclass

import pytest
import torch

from components.vision.diffusion.guidance import (
    batch_conditions,
    drop_condition,
    guided_denoiser,
)


@dataclass
class Text:
    context: torch.Tensor  # [B, L, D]
    mask: torch.Tensor | None = None  # bool [B, L], True = padding


class Recording:
    """A network whose output depends on x, t and every part of its condition, per sample:
    x · (1 + mean of the unpadded context) + t (+ 0.5 per padded token)."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, text: Text) -> torch.Tensor:
        self.batches.append(x.shape[0])
        keep = torch.ones(text.context.shape[:2]) if text.mask is None else (~text.mask).float()
        mean = (text.context.mean(-1) * keep).sum(1) / keep.sum(1).clamp(min=1)  # [B]
        padded = 0.0 if text.mask is None else 0.5 * text.mask.sum(1)
        per_sample = (1 + mean)[:, None, None, None]
        return x * per_sample + (t + padded)[:, None, None, None]


def _inputs(b: int = 3) -> tuple[torch.Tensor, torch.Tensor, Text, Text]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(b, 2, 4, 4, generator=generator)
    t = torch.tensor([999, 500, 3])[:b]
    mask = torch.zeros(b, 5, dtype=torch.bool)
    mask[0, 3:] = True  # the first prompt is 3 tokens long
    cond = Text(torch.randn(b, 5, 8, generator=generator), mask)
    null = Text(torch.zeros(b, 5, 8), torch.zeros(b, 5, dtype=torch.bool))
    return x, t, cond, null


def test_guidance_1_is_the_conditional_prediction_in_one_call():
    network = Recording()
    x, t, cond, null = _inputs()
    out = guided_denoiser(network, cond, null, 1.0)(x, t)
    assert network.batches == [3]
    assert torch.equal(out, network(x, t, cond))


def test_guidance_0_is_the_unconditional_prediction_in_one_call():
    network = Recording()
    x, t, cond, null = _inputs()
    out = guided_denoiser(network, cond, null, 0.0)(x, t)
    assert network.batches == [3]
    assert torch.equal(out, network(x, t, null))


@pytest.mark.parametrize("scale", [0.5, 3.0, 7.5])
def test_guidance_mixes_two_separate_predictions_from_one_batched_call(scale):
    network = Recording()
    x, t, cond, null = _inputs()
    out = guided_denoiser(network, cond, null, scale)(x, t)
    assert network.batches == [6]  # one call on [x, x]
    u, c = network(x, t, null), network(x, t, cond)
    assert not torch.allclose(u, c)  # the condition (context and its mask) matters
    assert torch.allclose(out, u + scale * (c - u), atol=1e-5)


def test_guidance_batches_masks_and_keeps_none():
    x, t, cond, null = _inputs()
    both = batch_conditions(null, cond)
    assert both.context.shape == (6, 5, 8) and both.mask is not None
    assert torch.equal(both.context[:3], null.context) and torch.equal(
        both.context[3:], cond.context
    )
    assert torch.equal(both.mask[3:], cond.mask)
    unmasked = batch_conditions(Text(null.context), Text(cond.context))
    assert unmasked.mask is None
    network = Recording()
    out = guided_denoiser(network, Text(cond.context), Text(null.context), 2.0)(x, t)
    u, c = network(x, t, Text(null.context)), network(x, t, Text(cond.context))
    assert torch.allclose(out, u + 2.0 * (c - u), atol=1e-5)
    with pytest.raises(ValueError, match=r"condition.mask: None on one side only"):
        guided_denoiser(network, cond, Text(null.context), 2.0)


def test_tuples_and_plain_tensors_batch_too():
    labels, null = torch.tensor([2, 3]), torch.tensor([10, 10])
    assert torch.equal(batch_conditions(null, labels), torch.tensor([10, 10, 2, 3]))
    pair = batch_conditions((null, None), (labels, None))
    assert isinstance(pair, tuple) and pair[1] is None
    assert torch.equal(pair[0], torch.tensor([10, 10, 2, 3]))

    def network(x, t, labels):
        return x * labels[:, None].to(x)

    x, t = torch.ones(2, 4), torch.zeros(2, dtype=torch.int64)
    out = guided_denoiser(network, labels, null, 4.0)(x, t)
    assert torch.allclose(out[:, 0], 10 + 4.0 * (labels - 10).float())
    with pytest.raises(TypeError, match="cannot batch"):
        batch_conditions(null, [labels])
    with pytest.raises(ValueError, match=r"condition: 2 parts on one side, 1 on the other"):
        batch_conditions((null, null), (labels,))


@pytest.mark.parametrize("scale", [-1.0, -1e-9, math.nan])
def test_negative_guidance_raises_naming_guidance(scale):
    x, t, cond, null = _inputs()
    with pytest.raises(ValueError, match="guidance = .*: expected a float >= 0"):
        guided_denoiser(Recording(), cond, null, scale)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_condition_dropout_rate_is_observed(p):
    n = 20000
    drops = drop_condition(n, p, torch.Generator().manual_seed(0))
    assert drops.dtype == torch.bool and drops.shape == (n,)
    # 4 binomial standard deviations: fails by chance once in ~16,000 seeds (this one is fixed)
    assert abs(drops.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_condition_dropout_edges_and_errors():
    generator = torch.Generator().manual_seed(1)
    assert not drop_condition(1000, 0.0, generator).any()
    assert drop_condition(1000, 1.0, generator).all()
    a = drop_condition(64, 0.3, torch.Generator().manual_seed(7))
    assert torch.equal(a, drop_condition(64, 0.3, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="p = 1.5: expected a probability in"):
        drop_condition(4, 1.5)
