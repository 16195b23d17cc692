import math

import pytest
import torch
import torch.nn.functional as F

from components.config import ConfigError, build
from components.nn.attention import (
    AttentionConfig,
    MultiHeadAttention,
    linear_attention,
    softmax_attention,
)

B, H, D = 2, 3, 8


def qkv(n: int, s: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    s = n if s is None else s
    shapes = [(B, H, n, D), (B, H, s, D), (B, H, s, D + 2)]  # Dv != D on purpose
    return tuple(torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes)


def padding(s: int) -> torch.Tensor:
    """Batch 0 unpadded; batch 1 with its last third and its first key padded."""
    mask = torch.zeros(B, s, dtype=torch.bool)
    mask[1, s - s // 3 :] = True
    mask[1, 0] = True
    return mask


def allowed_keys(n: int, s: int, causal: bool, key_padding_mask: torch.Tensor | None):
    """bool [B, 1, N, S]: True where query i may see key j."""
    allowed = torch.ones(B, 1, n, s, dtype=torch.bool)
    if causal:
        allowed &= torch.ones(n, s, dtype=torch.bool).tril()
    if key_padding_mask is not None:
        allowed &= ~key_padding_mask[:, None, None, :]
    return allowed


def naive_linear(q, k, v, causal, key_padding_mask):
    """The O(N·S) formula: weights φ(q_i)·φ(k_j) over the allowed j, normalised over j."""
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    weights = torch.einsum("bhid,bhjd->bhij", phi_q, phi_k)
    weights = weights * allowed_keys(q.shape[2], k.shape[2], causal, key_padding_mask)
    return (weights / weights.sum(-1, keepdim=True)) @ v


def naive_softmax(q, k, v, causal, key_padding_mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = allowed_keys(q.shape[2], k.shape[2], causal, key_padding_mask)
    return torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1) @ v


@pytest.mark.parametrize("n", [1, 7, 16, 37, 64])  # chunk size 16: below, equal, ragged, many
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_linear_attention_equals_the_quadratic_formula(n, causal, padded):
    q, k, v = qkv(n, seed=n)
    mask = padding(n) if padded and n > 1 else None
    got = linear_attention(q, k, v, causal, mask, chunk_size=16)
    want = naive_linear(q, k, v, causal, mask)
    if mask is not None and causal:
        # Batch 1's first key is padded, so its first query sees nothing: output 0 by contract.
        want[1, :, 0] = 0.0
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 5, 32, 100])
def test_causal_linear_attention_does_not_depend_on_the_chunk_size(chunk_size):
    q, k, v = qkv(50)
    want = naive_linear(q, k, v, True, None)
    torch.testing.assert_close(linear_attention(q, k, v, True, chunk_size=chunk_size), want)


def test_linear_cross_attention_equals_the_formula():
    q, k, v = qkv(9, s=23)
    mask = padding(23)
    got = linear_attention(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(got, naive_linear(q, k, v, False, mask), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_softmax_attention_equals_explicit_softmax(causal, padded):
    q, k, v = qkv(13)
    mask = padding(13) if padded else None
    want = naive_softmax(q, k, v, causal, mask)
    if padded and causal:
        want[1, :, 0] = 0.0  # sees no key (NaN in the naive formula): 0 by contract
    torch.testing.assert_close(softmax_attention(q, k, v, causal, mask), want)


def test_softmax_cross_attention_equals_explicit_softmax():
    q, k, v = qkv(5, s=11)
    mask = padding(11)
    want = naive_softmax(q, k, v, False, mask)
    torch.testing.assert_close(softmax_attention(q, k, v, key_padding_mask=mask), want)


@pytest.mark.parametrize("kind", ["softmax", "linear"])
@pytest.mark.parametrize("causal", [False, True])
def test_fully_padded_rows_give_zeros_and_finite_gradients(kind, causal):
    q, k, v = (t.float().requires_grad_() for t in qkv(10))
    mask = torch.zeros(B, 10, dtype=torch.bool)
    mask[0] = True  # every key of batch 0 padded
    attend = softmax_attention if kind == "softmax" else linear_attention
    out = attend(q, k, v, causal, mask)
    out.sum().backward()
    assert torch.all(out[0] == 0)
    assert out[1].abs().sum() > 0
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_padded_keys_do_not_change_the_output(kind):
    torch.manual_seed(0)
    attn = MultiHeadAttention(AttentionConfig(dim=12, heads=3, kind=kind)).eval()
    x, context = torch.randn(2, 5, 12), torch.randn(2, 7, 12)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, 4:] = True
    with_padding = attn(x, context, key_padding_mask=mask)
    changed = context.clone()
    changed[:, 4:] = 1e3  # garbage where padded
    torch.testing.assert_close(attn(x, changed, key_padding_mask=mask), with_padding)
    torch.testing.assert_close(attn(x, context[:, :4]), with_padding)


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_module_projects_heads_and_calls_the_attention_function(kind):
    torch.manual_seed(0)
    cfg = AttentionConfig(dim=12, heads=3, kind=kind, causal=True, chunk_size=4)
    attn = MultiHeadAttention(cfg).double().eval()
    x = torch.randn(2, 10, 12, dtype=torch.float64)

    def heads(t):  # [B, N, 12] -> [B, 3, N, 4]
        return t.view(2, 10, 3, 4).transpose(1, 2)

    q, k, v = heads(attn.to_q(x)), heads(attn.to_k(x)), heads(attn.to_v(x))
    ref = naive_softmax if kind == "softmax" else naive_linear
    want = attn.out(ref(q, k, v, True, None).transpose(1, 2).reshape(2, 10, 12))
    torch.testing.assert_close(attn(x), want)


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_cross_attention_shapes_and_self_attention_default(kind):
    torch.manual_seed(0)
    attn = MultiHeadAttention(AttentionConfig(dim=16, heads=4, kind=kind)).eval()
    x, context = torch.randn(3, 5, 16), torch.randn(3, 19, 16)
    assert attn(x, context).shape == (3, 5, 16)
    assert attn(context, x).shape == (3, 19, 16)
    torch.testing.assert_close(attn(x), attn(x, x))
    torch.testing.assert_close(attn(x, context), attn(x, context, context))
    assert not torch.allclose(attn(x), attn(x, context[:, :5]))


def test_causal_self_attention_ignores_the_future_and_refuses_other_lengths():
    torch.manual_seed(0)
    for kind in ("softmax", "linear"):
        attn = MultiHeadAttention(AttentionConfig(dim=8, heads=2, kind=kind, causal=True))
        x = torch.randn(1, 12, 8)
        changed = x.clone()
        changed[:, 6:] = torch.randn(1, 6, 8)
        out, out_changed = attn(x), attn(changed)
        torch.testing.assert_close(out[:, :6], out_changed[:, :6])
        assert not torch.allclose(out[:, 6:], out_changed[:, 6:])
        with pytest.raises(ValueError, match="self-attention: 11 keys for 12 queries"):
            attn(x, x[:, :11])


def torch_mha_with_the_same_weights(attn: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    """`torch.nn.MultiheadAttention` (batch first, float64) holding `attn`'s projections."""
    cfg = attn.config
    ref = torch.nn.MultiheadAttention(
        cfg.dim, cfg.heads, batch_first=True, kdim=cfg.kdim, vdim=cfg.vdim, dtype=torch.float64
    )
    projections = (attn.to_q, attn.to_k, attn.to_v)
    with torch.no_grad():
        if ref._qkv_same_embed_dim:  # one [3·dim, dim] weight, else one per projection
            ref.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        else:
            for name, p in zip(("q", "k", "v"), projections, strict=True):
                getattr(ref, f"{name}_proj_weight").copy_(p.weight)
        ref.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        ref.out_proj.weight.copy_(attn.out.weight)
        ref.out_proj.bias.copy_(attn.out.bias)
    return ref.eval()


@pytest.mark.parametrize("case", ["self", "causal", "cross", "separate_kv", "padded", "widths"])
def test_softmax_module_equals_torch_multihead_attention(case):
    torch.manual_seed(0)
    kdim, vdim = (10, 6) if case == "widths" else (None, None)
    cfg = AttentionConfig(dim=12, heads=3, causal=case == "causal", kdim=kdim, vdim=vdim)
    attn = MultiHeadAttention(cfg).double().eval()
    ref = torch_mha_with_the_same_weights(attn)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    memory = torch.randn(2, 11, 12, dtype=torch.float64)
    mask, ref_kwargs = None, {}
    if case in ("self", "causal"):
        key = value = x
        if case == "causal":  # torch's attn_mask: True = not allowed
            ref_kwargs["attn_mask"] = torch.ones(7, 7, dtype=torch.bool).triu(1)
    elif case == "cross":
        key = value = memory
    elif case == "widths":
        key = torch.randn(2, 11, 10, dtype=torch.float64)
        value = torch.randn(2, 11, 6, dtype=torch.float64)
    else:  # DETR's cross-attention: positions on the keys, not on the values
        key, value = memory + torch.randn(11, 12, dtype=torch.float64), memory
        mask = padding(11) if case == "padded" else None
    got = attn(x, key, value, key_padding_mask=mask)
    want, _ = ref(x, key, value, key_padding_mask=mask, need_weights=False, **ref_kwargs)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert got.abs().mean() > 0.05
    if case in ("separate_kv", "padded"):  # the values are not the keys
        assert not torch.allclose(got, attn(x, key, key_padding_mask=mask), atol=1e-3)


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_separate_keys_and_values_of_other_widths_equal_the_formula(kind):
    torch.manual_seed(0)
    cfg = AttentionConfig(dim=12, heads=3, kind=kind, kdim=10, vdim=6)
    attn = MultiHeadAttention(cfg).double().eval()
    assert (attn.to_k.in_features, attn.to_v.in_features, attn.to_q.in_features) == (10, 6, 12)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    key = torch.randn(2, 23, 10, dtype=torch.float64)
    value = torch.randn(2, 23, 6, dtype=torch.float64)
    mask = padding(23)

    def heads(t):  # [B, L, 12] -> [B, 3, L, 4]
        return t.view(2, -1, 3, 4).transpose(1, 2)

    q, k, v = heads(attn.to_q(x)), heads(attn.to_k(key)), heads(attn.to_v(value))
    ref = naive_softmax if kind == "softmax" else naive_linear
    want = attn.out(ref(q, k, v, False, mask).transpose(1, 2).reshape(2, 5, 12))
    got = attn(x, key, value, key_padding_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert got.shape == (2, 5, 12) and got.abs().mean() > 0.05


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_causal_self_attention_takes_positions_on_queries_and_keys_only(kind):
    torch.manual_seed(0)
    cfg = AttentionConfig(dim=12, heads=3, kind=kind, causal=True, chunk_size=4)
    attn = MultiHeadAttention(cfg).double().eval()
    x = torch.randn(2, 10, 12, dtype=torch.float64)
    pos = torch.randn(10, 12, dtype=torch.float64)

    def heads(t):  # [B, 10, 12] -> [B, 3, 10, 4]
        return t.view(2, 10, 3, 4).transpose(1, 2)

    q, k, v = heads(attn.to_q(x + pos)), heads(attn.to_k(x + pos)), heads(attn.to_v(x))
    ref = naive_softmax if kind == "softmax" else naive_linear
    want = attn.out(ref(q, k, v, True, None).transpose(1, 2).reshape(2, 10, 12))
    got = attn(x + pos, x + pos, x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, attn(x + pos), atol=1e-3)  # pos on v too: another result


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_cross_attention_gradients_reach_every_input_and_parameter(kind):
    torch.manual_seed(0)
    attn = MultiHeadAttention(AttentionConfig(dim=12, heads=3, kind=kind, kdim=10, vdim=6))
    x = torch.randn(2, 5, 12, requires_grad=True)
    key = torch.randn(2, 9, 10, requires_grad=True)
    value = torch.randn(2, 9, 6, requires_grad=True)
    attn(x, key, value, key_padding_mask=padding(9)).square().sum().backward()
    params = dict(attn.named_parameters())
    if kind == "softmax":
        # The key bias adds q_i·b to every score of row i, which softmax cancels: no gradient.
        torch.testing.assert_close(params.pop("to_k.bias").grad, torch.zeros(12), atol=1e-5, rtol=0)
    for name, t in [("query", x), ("key", key), ("value", value), *params.items()]:
        assert torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 1e-3, name
    assert value.grad[1, -3:].abs().sum() == 0  # padded keys pass no gradient to their values


def test_keys_and_values_of_different_lengths_raise():
    attn = MultiHeadAttention(AttentionConfig(dim=8, heads=2))
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="6 keys but 5 values"):
        attn(x, torch.randn(1, 6, 8), torch.randn(1, 5, 8))


def test_causal_linear_attention_saves_memory_linear_in_n():
    """Autograd saves O(N·D) for causal linear attention: no N×N and no N×D×D tensor."""

    def saved_bytes(n: int) -> int:
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        q, k, v = (torch.randn(1, 2, n, 32, requires_grad=True) for _ in range(3))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            linear_attention(q, k, v, causal=True, chunk_size=32)
        return sum(storages.values())

    small, large = saved_bytes(1024), saved_bytes(4096)
    qkv_bytes = 3 * 2 * 4096 * 32 * 4
    assert large < 10 * qkv_bytes  # N·D·D would be 32x the input size
    assert 3.5 < large / small < 4.5


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="dim = 10: expected a multiple of heads=4"):
        AttentionConfig(dim=10, heads=4)
    with pytest.raises(ConfigError, match=r"attn.kind = 'cosine': expected one of"):
        build(AttentionConfig, {"dim": 8, "kind": "cosine"}, where="attn")
    with pytest.raises(ConfigError, match="dropout"):
        AttentionConfig(dim=8, dropout=1.0)
    with pytest.raises(ConfigError, match="kdim = 0: expected an int >= 1 or null"):
        AttentionConfig(dim=8, kdim=0)
    cfg = build(AttentionConfig, {"dim": 8, "heads": 2, "kind": "linear"})
    assert (cfg.dim, cfg.heads, cfg.kind, cfg.causal) == (8, 2, "linear", False)
    assert (cfg.kdim, cfg.vdim) == (None, None)
    cfg = build(AttentionConfig, {"dim": 8, "kdim": 768, "vdim": None})
    assert (cfg.kdim, cfg.vdim) == (768, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True])
def test_attention_on_cuda_matches_the_float64_formulas(causal):
    q, k, v = qkv(300)
    mask = padding(300)
    cuda = [t.float().cuda() for t in (q, k, v)]
    got = linear_attention(*cuda, causal, mask.cuda()).cpu().double()
    want = naive_linear(q, k, v, causal, mask)
    if causal:
        want[1, :, 0] = 0.0  # sees no key
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    got = softmax_attention(*cuda, causal, mask.cuda()).cpu().double()
    want = naive_softmax(q, k, v, causal, mask).nan_to_num(0.0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
