"""`attn_mask` (bool, True = blocked) in softmax attention, MultiHeadAttention and the decoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from components.nn.attention import AttentionConfig, MultiHeadAttention, softmax_attention
from components.nn.transformer import DecoderBlock, TransformerConfig, TransformerDecoder

B, H, D = 2, 3, 8


def qkv(n: int, s: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, H, n, D), (B, H, s, D), (B, H, s, D + 2)]
    return tuple(torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes)


def random_blocked(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """bool [..., N, S], about half True, but key 0 is never blocked, so every row sees a key."""
    gen = torch.Generator().manual_seed(seed)
    blocked = torch.rand(shape, generator=gen) < 0.5
    blocked[..., 0] = False
    return blocked


def naive_softmax(q, k, v, blocked):
    """softmax with -inf at every blocked (query, key); blocked bool broadcastable to
    [B, H, N, S]."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(blocked, -math.inf), dim=-1) @ v


@pytest.mark.parametrize("per_image", [False, True])
def test_attn_mask_equals_sdpa_and_the_explicit_softmax(per_image):
    q, k, v = qkv(7, 11)
    blocked = random_blocked((B, 7, 11) if per_image else (7, 11))
    got = softmax_attention(q, k, v, attn_mask=blocked)
    heads = blocked[:, None] if per_image else blocked  # [B, 1, N, S] or [N, S]
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=~heads)  # True = attend there
    torch.testing.assert_close(got, sdpa)
    torch.testing.assert_close(got, naive_softmax(q, k, v, heads))
    assert not torch.allclose(got, softmax_attention(q, k, v))  # the mask did something


@pytest.mark.parametrize("causal", [False, True])
def test_attn_mask_combines_with_key_padding_and_causal(causal):
    q, k, v = qkv(9, 9, seed=3)
    blocked = random_blocked((B, 9, 9), seed=4)
    padded = torch.zeros(B, 9, dtype=torch.bool)
    padded[1, 6:] = True
    got = softmax_attention(q, k, v, causal, padded, attn_mask=blocked)
    every = blocked | padded[:, None, :]
    if causal:
        every = every | torch.ones(9, 9, dtype=torch.bool).triu(1)
    torch.testing.assert_close(got, naive_softmax(q, k, v, every[:, None]))


def test_a_blocked_keys_value_changes_nothing_for_that_query():
    torch.manual_seed(0)
    attn = MultiHeadAttention(AttentionConfig(dim=12, heads=3)).eval()
    x, memory = torch.randn(2, 5, 12), torch.randn(2, 8, 12)
    blocked = torch.zeros(5, 8, dtype=torch.bool)
    blocked[:3, 6] = True  # queries 0-2 may not see key 6; queries 3-4 may
    changed = memory.clone()
    changed[:, 6] = 1e3 * torch.randn(2, 12)
    # key = memory, value = changed: only the value of key 6 differs
    out = attn(x, memory, memory, attn_mask=blocked)
    out_changed = attn(x, memory, changed, attn_mask=blocked)
    torch.testing.assert_close(out_changed[:, :3], out[:, :3])
    assert not torch.allclose(out_changed[:, 3:], out[:, 3:], atol=1e-2)


def test_a_mask_that_blocks_padded_keys_equals_key_padding():
    torch.manual_seed(0)
    attn = MultiHeadAttention(AttentionConfig(dim=12, heads=3)).eval()
    x, memory = torch.randn(2, 5, 12), torch.randn(2, 8, 12)
    padded = torch.zeros(2, 8, dtype=torch.bool)
    padded[0, 5:], padded[1, 2:4] = True, True
    as_mask = padded[:, None, :].expand(2, 5, 8)
    torch.testing.assert_close(attn(x, memory, attn_mask=as_mask), attn(x, memory, None, padded))


@pytest.mark.parametrize("with_padding", [False, True])
def test_a_fully_blocked_row_gives_zeros_and_finite_gradients(with_padding):
    q, k, v = (t.float().requires_grad_() for t in qkv(6, 6))
    blocked = torch.zeros(6, 6, dtype=torch.bool)
    padded = torch.zeros(B, 6, dtype=torch.bool)
    if with_padding:  # the mask blocks keys 0-2 of query 4, padding the rest in image 1
        blocked[4, :3] = True
        padded[1, 3:] = True
    else:
        blocked[4] = True
    out = softmax_attention(q, k, v, key_padding_mask=padded, attn_mask=blocked)
    out.sum().backward()
    empty = [1] if with_padding else [0, 1]
    assert torch.all(out[empty, :, 4] == 0)
    assert out[:, :, :4].abs().sum() > 0
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_linear_attention_refuses_a_mask():
    attn = MultiHeadAttention(AttentionConfig(dim=8, heads=2, kind="linear"))
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="attn_mask needs attention: softmax"):
        attn(x, attn_mask=torch.zeros(4, 4, dtype=torch.bool))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.zeros(4, 4), "must be bool"),
        (torch.zeros(4, 5, dtype=torch.bool), r"expected \[4, 4\] or \[1, 4, 4\]"),
        (torch.zeros(3, 4, 4, dtype=torch.bool), r"expected \[4, 4\] or \[1, 4, 4\]"),
    ],
)
def test_a_float_or_misshapen_mask_is_refused(mask, message):
    attn = MultiHeadAttention(AttentionConfig(dim=8, heads=2))
    with pytest.raises(ValueError, match=message):
        attn(torch.randn(1, 4, 8), attn_mask=mask)


def decoder_config(**overrides) -> TransformerConfig:
    base = dict(dim=16, depth=3, heads=4, mlp_ratio=2.0, max_len=16, decoder_causal=False)
    return TransformerConfig(**(base | overrides))


def two_groups_mask() -> torch.Tensor:
    """bool [10, 10]: queries 0-3 and 4-9 never see each other."""
    group = torch.tensor([0] * 4 + [1] * 6)
    return group[:, None] != group[None, :]


@pytest.mark.parametrize("stack", [False, True])
def test_the_decoder_mask_reaches_self_attention_only(stack):
    torch.manual_seed(0)
    cls = TransformerDecoder if stack else DecoderBlock
    decoder = cls(decoder_config()).eval()
    x, context = torch.randn(2, 10, 16), torch.randn(2, 7, 16)  # 7 context keys, not 10
    changed = x.clone()
    changed[:, :4] = torch.randn(2, 4, 16)
    mask = two_groups_mask()
    out = decoder(x, context, None, None, None, None, mask)
    out_changed = decoder(changed, context, self_attn_mask=mask)
    torch.testing.assert_close(out_changed[:, 4:], out[:, 4:])
    assert not torch.allclose(out_changed[:, :4], out[:, :4])
    unmasked = decoder(changed, context)
    assert not torch.allclose(unmasked[:, 4:], out[:, 4:])  # without the mask it leaks


def test_checkpointing_passes_the_mask_through():
    mask = two_groups_mask()
    x, context = torch.randn(2, 10, 16), torch.randn(2, 7, 16)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        decoder = TransformerDecoder(decoder_config(gradient_checkpointing=checkpointing))
        loss = decoder(x, context, self_attn_mask=mask).square().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in decoder.parameters()]))
    (plain_loss, plain_grads), (checked_loss, checked_grads) = results
    torch.testing.assert_close(checked_loss, plain_loss)
    for checked, plain in zip(checked_grads, plain_grads, strict=True):
        torch.testing.assert_close(checked, plain)
