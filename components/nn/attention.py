"""Multi-head self- and cross-attention, softmax or linear.

    query [B, N, dim], key [B, S, kdim] (default: the query), value [B, S, vdim] (default: the
    key) -> [B, N, dim]

Keys and values come from separate sources when they differ: DETR attends with
key = memory + pos, value = memory; latent diffusion cross-attends to a text context whose
width (kdim = vdim = the text encoder's) is not the image features' (dim).

softmax: `F.scaled_dot_product_attention`, O(N·S) time.
linear: Katharopoulos et al. 2020 ("Transformers are RNNs"), feature map φ(x) = elu(x) + 1,

    out_i = Σ_j (φ(q_i)·φ(k_j)) v_j / Σ_j φ(q_i)·φ(k_j)     (j <= i when causal)

computed without the N×S weights: non-causal as φ(Q)(φ(K)ᵀV) / φ(Q)Σφ(K), causal by chunks
(`components.nn.causal_linear`). O(N) time and memory in the sequence length.

Masks: `key_padding_mask` is bool [B, S], True = padded (that key is ignored), as in
`torch.nn.MultiheadAttention`. `causal` lets query i see keys j <= i; it is for self-attention
only, so keys and values must be the queries' own sequence (S = N, positions may be added to
the keys), and a key of another length raises. `attn_mask` (softmax only) is bool [N, S] or
[B, N, S], True = blocked: query i may not see key j (DN-DETR's denoising groups); it combines
with the other two by "blocked if any says so". Linear attention has no N×S weights to mask and
raises on it. A query that sees no key at all (every key padded or blocked) gets a zero output,
for both kinds.

Causal linear attention is a recurrence ("Transformers are RNNs"): `step` takes one token and
the running sums of the tokens before it, S = Σ φ(k_j) v_jᵀ [B, H, D, E] and z = Σ φ(k_j)
[B, H, D], and returns the token's output and the sums with it added: O(1) time and memory per
token however long the sequence, with outputs equal to the batched causal forward's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import require
from components.nn.causal_linear import causal_linear_attention

AttentionKind = Literal["softmax", "linear"]


class LinearAttentionState(NamedTuple):
    """Causal linear attention's running sums over the tokens seen so far."""

    kv: Tensor  # Σ φ(k_j) v_jᵀ [B, H, D, E]
    k: Tensor  # Σ φ(k_j) [B, H, D]


@dataclass
class AttentionConfig:
    dim: int  # width of the queries and the output; split evenly over the heads
    heads: int = 8
    kind: AttentionKind = "softmax"
    causal: bool = False  # query i sees keys j <= i; self-attention only
    dropout: float = 0.0  # training only: on the output, and on softmax weights
    chunk_size: int = 64  # causal linear attention: queries per chunk (C)
    eps: float = 1e-6  # linear attention: floor of the normaliser
    kdim: int | None = None  # width of the keys' source (None = dim), e.g. a text encoder's
    vdim: int | None = None  # width of the values' source (None = dim), as in torch's MHA

    def __post_init__(self) -> None:
        require(self.dim >= 1, "dim", self.dim, "an int >= 1")
        require(self.heads >= 1, "heads", self.heads, "an int >= 1")
        require(self.dim % self.heads == 0, "dim", self.dim, f"a multiple of heads={self.heads}")
        require(self.kind in ("softmax", "linear"), "kind", self.kind, "'softmax' or 'linear'")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a float in [0, 1)")
        require(self.chunk_size >= 1, "chunk_size", self.chunk_size, "an int >= 1")
        require(self.eps > 0.0, "eps", self.eps, "a float > 0")
        for key in ("kdim", "vdim"):
            width = getattr(self, key)
            require(width is None or width >= 1, key, width, "an int >= 1 or null (= dim)")


class MultiHeadAttention(nn.Module):
    """Projections to heads (`to_q` from dim, `to_k` from kdim, `to_v` from vdim), softmax or
    linear attention, output projection `out`."""

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config
        kdim = config.dim if config.kdim is None else config.kdim
        vdim = config.dim if config.vdim is None else config.vdim
        self.to_q = nn.Linear(config.dim, config.dim)
        self.to_k = nn.Linear(kdim, config.dim)
        self.to_v = nn.Linear(vdim, config.dim)
        self.out = nn.Linear(config.dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """query [B, N, dim]; key [B, S, kdim] or None (the query: self-attention, S = N);
        value [B, S, vdim] or None (the key); key_padding_mask bool [B, S], True = padded;
        attn_mask bool [N, S] or [B, N, S], True = blocked (softmax only). Returns [B, N, dim]."""
        cfg = self.config
        key = query if key is None else key
        value = key if value is None else value
        if value.shape[1] != key.shape[1]:
            raise ValueError(f"{key.shape[1]} keys but {value.shape[1]} values")
        if cfg.causal and key.shape[1] != query.shape[1]:
            raise ValueError(
                f"causal attention is self-attention: {key.shape[1]} keys for "
                f"{query.shape[1]} queries (keys and values must be the queries' sequence)"
            )
        if attn_mask is not None and cfg.kind != "softmax":
            raise ValueError(
                "attn_mask needs attention: softmax (linear attention never forms the N×S "
                "weights a mask would block)"
            )
        q, k, v = map(self._split_heads, (self.to_q(query), self.to_k(key), self.to_v(value)))
        if cfg.kind == "softmax":
            p = cfg.dropout if self.training else 0.0
            out = softmax_attention(
                q, k, v, cfg.causal, key_padding_mask, dropout_p=p, attn_mask=attn_mask
            )
        else:
            out = linear_attention(q, k, v, cfg.causal, key_padding_mask, cfg.chunk_size, cfg.eps)
        b, h, n, d = out.shape
        return self.dropout(self.out(out.transpose(1, 2).reshape(b, n, h * d)))

    def step(
        self, x: Tensor, state: LinearAttentionState | None = None
    ) -> tuple[Tensor, LinearAttentionState]:
        """Causal linear self-attention, one token at a time: x [B, dim], the state after the
        tokens before it (None: the first token) -> (its output [B, dim], the state with it
        added). Equals row i of `forward` over the whole sequence (tested)."""
        cfg = self.config
        if cfg.kind != "linear" or not cfg.causal:
            raise ValueError(
                f"step runs causal linear attention as a recurrence; this is {cfg.kind} "
                f"attention with causal={cfg.causal}"
            )
        b = x.shape[0]
        q, k, v = (proj(x).view(b, cfg.heads, -1) for proj in (self.to_q, self.to_k, self.to_v))
        phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)  # [B, H, D]
        kv = phi_k.unsqueeze(-1) * v.unsqueeze(-2)  # [B, H, D, E]
        if state is not None:
            kv, phi_k = kv + state.kv, phi_k + state.k
        num = torch.einsum("bhd,bhde->bhe", phi_q, kv)
        den = torch.linalg.vecdot(phi_q, phi_k).clamp_min(cfg.eps)
        out = (num / den.unsqueeze(-1)).reshape(b, -1)
        return self.dropout(self.out(out)), LinearAttentionState(kv, phi_k)

    def _split_heads(self, t: Tensor) -> Tensor:
        """[B, L, H·D] -> [B, H, L, D]"""
        b, length, _ = t.shape
        return t.view(b, length, self.config.heads, -1).transpose(1, 2)


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """softmax(QKᵀ/√D + mask) V through SDPA. q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv],
    key_padding_mask bool [B, S] (True = padded), attn_mask bool [N, S] or [B, N, S] (True =
    blocked) -> [B, H, N, Dv]. A query row with no key left to see returns zeros."""
    if key_padding_mask is None and attn_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    n, s = q.shape[-2], k.shape[-2]
    # SDPA's boolean mask says where to attend, so every "blocked" mask enters inverted.
    allowed = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=q.device)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
    if attn_mask is not None:
        allowed = allowed & ~_heads_broadcast(attn_mask, q.shape[0], n, s)  # [B or 1, 1, N, S]
    if causal:
        allowed = allowed & torch.ones(n, s, dtype=torch.bool, device=q.device).tril()
    # A query row with no allowed key would softmax to NaN: let it see everything, then zero it.
    sees_a_key = allowed.any(dim=-1, keepdim=True)  # [B or 1, 1, N or 1, 1]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed | ~sees_a_key, dropout_p=dropout_p
    )
    return out.masked_fill(~sees_a_key, 0.0)


def _heads_broadcast(attn_mask: Tensor, batch: int, n: int, s: int) -> Tensor:
    """Checked attn_mask bool [N, S] or [B, N, S] -> [1 or B, 1, N, S] (one mask for all heads)."""
    if attn_mask.dtype != torch.bool:
        # A float mask would be an additive bias: inverting it as booleans would be wrong.
        raise ValueError(f"attn_mask must be bool (True = blocked), got {attn_mask.dtype}")
    if attn_mask.shape not in ((n, s), (batch, n, s)):
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} for {n} queries and {s} keys "
            f"(batch {batch}): expected [{n}, {s}] or [{batch}, {n}, {s}]"
        )
    return attn_mask.reshape(-1, 1, n, s)


def elu_feature_map(x: Tensor) -> Tensor:
    """φ(x) = elu(x) + 1 > 0, so every weight φ(q)·φ(k) is positive."""
    return F.elu(x).add_(1.0)  # in place: elu's backward reads its input, not its output


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> Tensor:
    """Linear attention with φ = elu + 1. q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv],
    key_padding_mask bool [B, S] (True = padded) -> [B, H, N, Dv].

    Padded keys get φ(k) = 0, so they add nothing to numerator or normaliser; the normaliser is
    floored at `eps`, so a query that sees no key returns 0 instead of NaN.
    """
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
    if key_padding_mask is not None:
        phi_k = phi_k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
    if causal:
        return causal_linear_attention(phi_q, phi_k, v, chunk_size, eps)
    # A column of ones after V: the same products then give the normaliser Σ_j φ(q_i)·φ(k_j)
    # as a last output column, with no separate pass for it.
    v_one = F.pad(v, (0, 1), value=1.0)  # [B, H, S, Dv + 1]
    sums = phi_q @ (phi_k.transpose(-2, -1) @ v_one)  # [B, H, N, Dv + 1]
    # split, not slicing: its backward concatenates instead of zero-filling per slice.
    num, den = sums.split([v.shape[-1], 1], dim=-1)
    return num / den.clamp_min(eps)
