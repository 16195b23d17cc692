import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from components.config import ConfigError, build
from components.nn.positional import PositionEmbedding, sinusoidal_table
from components.nn.transformer import (
    _SDPA_KERNELS,
    DecoderBlock,
    EncoderBlock,
    TransformerConfig,
    TransformerDecoder,
    TransformerEncoder,
)
from tests.components.nn.test_attention import naive_linear, torch_mha_with_the_same_weights

DIM = 16


def config(**overrides) -> TransformerConfig:
    base = dict(dim=DIM, depth=3, heads=4, mlp_ratio=2.0, max_len=64, chunk_size=8)
    return TransformerConfig(**(base | overrides))


def build_stack(kind: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = TransformerEncoder if kind == "encoder" else TransformerDecoder
    return cls(config(**overrides))


def inputs(kind: str, with_pos: bool = False) -> tuple[torch.Tensor, ...]:
    """encoder: x, pad (+ pos); decoder: x, context, pad, context_pad (+ query_pos, pos)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 20, DIM, generator=gen)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[1, 15:] = True
    pos = torch.randn(2, 20, DIM, generator=gen)
    if kind == "encoder":
        return (x, pad, pos) if with_pos else (x, pad)
    context = torch.randn(2, 9, DIM, generator=gen)
    context_pad = torch.zeros(2, 9, dtype=torch.bool)
    context_pad[0, 6:] = True
    context_pos = torch.randn(9, DIM, generator=gen)  # shared over the batch
    if with_pos:
        return x, context, pad, context_pad, pos, context_pos
    return x, context, pad, context_pad


def loss_and_grads(model: torch.nn.Module, args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(123)  # same dropout masks in both runs
    loss = model(*args).square().mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def count_block_calls(model: torch.nn.Module) -> list[int]:
    calls = [0] * len(model.blocks)
    for i, block in enumerate(model.blocks):
        # A pre-hook: recomputation may stop early, before a block's forward returns.
        block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("attention", ["softmax", "linear"])
@pytest.mark.parametrize("with_pos", [False, True])
def test_checkpointing_gives_the_same_loss_and_gradients(kind, attention, with_pos):
    plain = build_stack(kind, attention=attention, dropout=0.1, position="learned")
    checked = build_stack(
        kind, attention=attention, dropout=0.1, position="learned", gradient_checkpointing=True
    )
    checked.load_state_dict(plain.state_dict())
    plain.train(), checked.train()
    calls = count_block_calls(checked)

    loss, grads = loss_and_grads(plain, inputs(kind, with_pos))
    forward_calls = list(calls)
    checked_loss, checked_grads = loss_and_grads(checked, inputs(kind, with_pos))

    assert forward_calls == [0, 0, 0]
    # Forward, then recomputed in backward; the last block is not checkpointed (no gain).
    assert calls == [2, 2, 1]
    torch.testing.assert_close(checked_loss, loss, rtol=0, atol=0)
    assert grads.keys() == checked_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checked_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert sum(g.abs().sum() for g in grads.values()) > 0


class CountSdpaKernels(TorchDispatchMode):
    """Counts calls of SDPA's fused kernels while active (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in _SDPA_KERNELS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_softmax_checkpointing_keeps_the_attention_kernels_outputs(kind):
    plain = build_stack(kind)  # no dropout: SDPA runs its fused kernel
    checked = build_stack(kind, gradient_checkpointing=True)
    checked.load_state_dict(plain.state_dict())
    plain.train(), checked.train()
    calls = count_block_calls(checked)
    loss, grads = loss_and_grads(plain, inputs(kind))
    with CountSdpaKernels() as kernels:
        checked_loss = checked(*inputs(kind)).square().mean()
        in_forward = kernels.calls
        checked_loss.backward()

    attentions = 3 * (2 if kind == "decoder" else 1)  # depth 3; self- and cross-attention
    assert in_forward == attentions
    assert calls == [2, 2, 1]  # the blocks are recomputed in backward ...
    assert kernels.calls == attentions  # ... but not their attention
    torch.testing.assert_close(checked_loss.detach(), loss, rtol=0, atol=0)
    for name, grad in grads.items():
        got = dict(checked.named_parameters())[name].grad
        torch.testing.assert_close(got, grad, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_checkpointing_is_off_in_eval_and_without_grad(kind):
    model = build_stack(kind, gradient_checkpointing=True)
    calls = count_block_calls(model)
    with torch.no_grad():
        model(*inputs(kind))
    assert calls == [1, 1, 1]
    model.eval()
    model(*inputs(kind)).sum().backward()
    assert calls == [2, 2, 2]
    model.train()
    model(*inputs(kind)).sum().backward()
    assert calls == [4, 4, 3]


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_decoder_is_causal_and_reads_the_context(attention):
    model = build_stack("decoder", attention=attention).eval()
    x, context, _, _ = inputs("decoder")
    out = model(x, context)
    later = x.clone()
    # Random, not constant: a shift equal across features is what LayerNorm removes.
    later[:, 12:] += torch.randn(2, 8, DIM)
    torch.testing.assert_close(model(later, context)[:, :12], out[:, :12])
    assert not torch.allclose(model(later, context)[:, 12:], out[:, 12:], atol=1e-3)
    assert not torch.allclose(model(x, context + torch.randn_like(context)), out, atol=1e-3)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_encoder_ignores_padded_positions(attention):
    model = build_stack("encoder", attention=attention).eval()
    x, pad = inputs("encoder")
    out = model(x, pad)
    garbage = x.clone()
    garbage[1, 15:] = 100.0
    changed = model(garbage, pad)
    torch.testing.assert_close(changed[:, :15], out[:, :15])
    torch.testing.assert_close(changed[0], out[0])
    # Bidirectional: an early position sees a late one.
    later = x.clone()
    later[:, 14] += torch.randn(2, DIM)
    assert not torch.allclose(model(later, pad)[:, 0], out[:, 0], atol=1e-3)


def attention_by_hand(attn, query, key, value, key_padding_mask=None):
    """`MultiHeadAttention` from its projections and the formulas: softmax through
    `torch.nn.MultiheadAttention` with the same weights, linear through the quadratic formula."""
    if attn.config.kind == "softmax":
        ref = torch_mha_with_the_same_weights(attn)
        return ref(query, key, value, key_padding_mask=key_padding_mask, need_weights=False)[0]
    b, n, _ = query.shape

    def heads(t):  # [B, L, dim] -> [B, H, L, D]
        return t.view(b, t.shape[1], attn.config.heads, -1).transpose(1, 2)

    q, k, v = heads(attn.to_q(query)), heads(attn.to_k(key)), heads(attn.to_v(value))
    out = naive_linear(q, k, v, attn.config.causal, key_padding_mask)
    return attn.out(out.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_encoder_block_adds_pos_to_queries_and_keys_only(attention):
    torch.manual_seed(0)
    block = EncoderBlock(config(attention=attention)).double().eval()
    x, pad, pos = (t.double() if t.is_floating_point() else t for t in inputs("encoder", True))
    h = block.norm_attn(x)
    want = x + attention_by_hand(block.attn, h + pos, h + pos, h, pad)
    want = want + block.mlp(block.norm_mlp(want))
    got = block(x, pad, pos=pos)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, block(x, pad), atol=1e-3)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_decoder_block_with_positions_is_detrs_layer(attention):
    """DETR's pre-norm decoder layer (`forward_pre`), written out."""
    torch.manual_seed(0)
    block = DecoderBlock(config(attention=attention, decoder_causal=False)).double().eval()
    x, memory, pad, memory_pad, query_pos, pos = (
        t.double() if t.is_floating_point() else t for t in inputs("decoder", True)
    )
    h = block.norm_self(x)
    want = x + attention_by_hand(block.self_attn, h + query_pos, h + query_pos, h, pad)
    h = block.norm_cross(want)
    want = want + attention_by_hand(
        block.cross_attn, h + query_pos, memory + pos, memory, memory_pad
    )
    want = want + block.mlp(block.norm_mlp(want))
    got = block(x, memory, pad, memory_pad, query_pos=query_pos, pos=pos)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    without_pos = block(x, memory, pad, memory_pad, query_pos=query_pos)
    assert not torch.allclose(got, without_pos, atol=1e-3)


def test_per_layer_positions_move_with_the_tokens():
    """With no input positions, pos is what breaks the encoder's permutation equivariance."""
    x, pad, pos = inputs("encoder", with_pos=True)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    model = build_stack("encoder", position="none").eval()
    out = model(x, pos=pos)
    torch.testing.assert_close(model(x[:, perm], pos=pos[:, perm]), out[:, perm])
    assert not torch.allclose(model(x[:, perm], pos=pos), out[:, perm], atol=1e-3)
    assert not torch.allclose(out, model(x), atol=1e-3)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_non_causal_decoder_queries_see_later_queries(attention):
    x, context, _, _ = inputs("decoder")
    later = x.clone()
    later[:, 12:] += torch.randn(2, 8, DIM, generator=torch.Generator().manual_seed(2))
    free = build_stack("decoder", attention=attention, decoder_causal=False).eval()
    causal = build_stack("decoder", attention=attention).eval()
    causal.load_state_dict(free.state_dict())  # the same weights: only the mask differs
    assert not torch.allclose(free(later, context)[:, 0], free(x, context)[:, 0], atol=1e-3)
    torch.testing.assert_close(causal(later, context)[:, :12], causal(x, context)[:, :12])


def test_detr_style_decoder_trains_its_object_queries_on_a_wider_context():
    """Zero targets, learned object queries as query_pos, a context of another width with
    positions of its own: the shapes, and gradients reaching the queries and the positions."""
    torch.manual_seed(0)
    model = TransformerDecoder(
        config(position="none", decoder_causal=False, context_dim=24, dropout=0.1)
    ).train()
    assert model.blocks[0].cross_attn.to_k.in_features == 24
    assert model.blocks[0].self_attn.to_k.in_features == DIM
    object_queries = torch.nn.Parameter(torch.randn(5, DIM))
    pos = torch.randn(2, 9, 24, requires_grad=True)
    memory = torch.randn(2, 9, 24)
    out = model(torch.zeros(2, 5, DIM), memory, query_pos=object_queries, pos=pos)
    assert out.shape == (2, 5, DIM)
    # Not out.square(): the final LayerNorm makes each token's mean square 1 whatever its input.
    (out * torch.randn_like(out)).sum().backward()
    for name, t in [("object_queries", object_queries), ("pos", pos)]:
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 1e-4, name
    with pytest.raises(RuntimeError):  # a context of the model's width no longer fits
        model(torch.zeros(2, 5, DIM), torch.randn(2, 9, DIM))


def test_encoder_without_positions_is_permutation_equivariant():
    x, _ = inputs("encoder")
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    model = build_stack("encoder", position="none").eval()
    torch.testing.assert_close(model(x[:, perm]), model(x)[:, perm])
    model = build_stack("encoder", position="sinusoidal").eval()
    assert not torch.allclose(model(x[:, perm]), model(x)[:, perm], atol=1e-3)


def test_blocks_keep_the_shape():
    torch.manual_seed(0)
    x, context = torch.randn(2, 7, DIM), torch.randn(2, 3, DIM)
    assert EncoderBlock(config())(x).shape == (2, 7, DIM)
    assert DecoderBlock(config())(x, context).shape == (2, 7, DIM)


def test_sinusoidal_table_matches_the_formula():
    table = sinusoidal_table(200, 8)
    for pos, i in [(0, 0), (1, 0), (7, 1), (199, 3)]:
        angle = pos / 10000 ** (2 * i / 8)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert table[0].tolist() == [0.0, 1.0] * 4
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_table(4, 7)


def test_position_embeddings_add_their_table():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    sinusoidal = PositionEmbedding("sinusoidal", 8, max_len=10)
    torch.testing.assert_close(sinusoidal(x), x + sinusoidal_table(5, 8))
    assert list(sinusoidal.parameters()) == [] and sinusoidal.state_dict() == {}

    learned = PositionEmbedding("learned", 8, max_len=10)
    assert [p.shape for p in learned.parameters()] == [(10, 8)]
    assert 0.01 < learned.table.std().item() < 0.04
    out = learned(x)
    torch.testing.assert_close(out, x + learned.table[:5])
    out.sum().backward()
    assert learned.table.grad[:5].eq(2.0).all() and learned.table.grad[5:].eq(0.0).all()

    assert PositionEmbedding("none", 8, max_len=10)(x) is x
    with pytest.raises(ValueError, match="max_len 10"):
        sinusoidal(torch.randn(1, 11, 8))


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="depth = 0"):
        config(depth=0)
    with pytest.raises(ConfigError, match="dim = 15: expected a multiple of heads=4"):
        config(dim=15, position="none")
    with pytest.raises(ConfigError, match="dim = 7: expected an even int"):
        config(dim=7, heads=1)
    with pytest.raises(ConfigError, match="model.position = 'rope'"):
        build(TransformerConfig, {"position": "rope"}, where="model")
    with pytest.raises(ConfigError, match="context_dim = 0: expected an int >= 1 or null"):
        config(context_dim=0)
    cfg = build(
        TransformerConfig, {"dim": 32, "attention": "linear", "gradient_checkpointing": True}
    )
    assert (cfg.dim, cfg.attention, cfg.gradient_checkpointing) == (32, "linear", True)
    assert (cfg.decoder_causal, cfg.context_dim) == (True, None)
    cfg = build(TransformerConfig, {"decoder_causal": False, "context_dim": 768})
    assert (cfg.decoder_causal, cfg.context_dim) == (False, 768)


def test_a_causal_linear_encoder_stepped_token_by_token_equals_its_batched_forward():
    """The recurrence (running sums per block) gives every row the chunked causal forward
    gives, and a token's output never depends on later tokens."""
    torch.manual_seed(0)
    config = TransformerConfig(
        dim=32, depth=2, heads=4, attention="linear", encoder_causal=True, position="none",
        chunk_size=8,
    )  # fmt: skip
    encoder = TransformerEncoder(config).eval()
    x = torch.randn(3, 21, 32)
    with torch.no_grad():
        batched = encoder(x)
        states, rows = None, []
        for i in range(21):
            row, states = encoder.step(x[:, i], states)
            rows.append(row)
        later = x.clone()
        later[:, 11:] += torch.randn(3, 10, 32)
        perturbed = encoder(later)
    assert torch.allclose(torch.stack(rows, 1), batched, atol=1e-5)
    assert torch.allclose(perturbed[:, :11], batched[:, :11], atol=1e-6)
    assert not torch.allclose(perturbed[:, 11:], batched[:, 11:], atol=1e-3)


def test_step_refuses_an_encoder_it_cannot_run_as_a_recurrence():
    softmax = TransformerEncoder(TransformerConfig(dim=16, depth=1, heads=2, position="none",
                                                   encoder_causal=True))  # fmt: skip
    with pytest.raises(ValueError, match="causal linear attention as a recurrence"):
        softmax.step(torch.zeros(1, 16))
    positioned = TransformerEncoder(TransformerConfig(dim=16, depth=1, heads=2, attention="linear",
                                                      encoder_causal=True))  # fmt: skip
    with pytest.raises(ValueError, match="position: none"):
        positioned.step(torch.zeros(1, 16))
