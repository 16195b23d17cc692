"""Causal OadTR: OadTR over the whole past of a stream in O(1) per frame, with causal linear
attention run as a recurrence ("Transformers are RNNs", Katharopoulos et al. 2020). No I/O.

    CausalOadTR   features [B, N, D] -> (current logits [B, N, K], future logits [B, N, ℓ, K]):
                  row t from frames <= t only; `step` gives the same one frame at a time

The windowed OadTR (`models.OadTR`) re-encodes its T latest frames at every step: its task
token and learned positions are relative to the current frame, so nothing computed for frame
t-1 is reused, and a step costs O(T) (softmax: O(T²)). Here every frame is a token of one
causal encoder over the stream (`components.nn`, `encoder_causal`, linear attention, no
positions: the causal order and the motion features carry time). A token's output never
changes once computed, so each block keeps running sums instead of its history, and a step
costs the same at frame 10 or 10,000. The current frame's own token, having attended to every
frame before it, plays the task token's part: the classifier reads it.

The decoder is OadTR's: ℓ learned queries (self-attention among them, softmax over ℓ) cross-
attend the encoder memory and predict frames t+1..t+ℓ. Their cross-attention is linear and
sees the memory of frames <= t (`PrefixCrossAttention`), so it is a running sum too. The
current frame is read from [its memory token; the mean of the decoder outputs], as in OadTR.

`window` (T) is the training context: windows of T frames, the first `burn_in` not in the
loss. Online, the state spans the whole stream, as a recurrent network's does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from components.action.config import OadTRConfig
from components.action.standardize import FeatureScale
from components.nn.attention import (
    AttentionConfig,
    LinearAttentionState,
    MultiHeadAttention,
    elu_feature_map,
)
from components.nn.causal_linear import causal_linear_attention
from components.nn.transformer import Mlp, TransformerConfig, TransformerEncoder


class PrefixCrossAttention(nn.Module):
    """Position t's queries attend the context of positions <= t, linearly.

    forward: x [B, N, L, dim] (L queries at each of N positions), context [B, N, dim]
             -> [B, N, L, dim]
    step:    x [B, L, dim], the context token of this position [B, dim], the running sums
             -> ([B, L, dim], sums)
    """

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config
        self.to_q, self.to_k, self.to_v, self.out = (
            nn.Linear(config.dim, config.dim) for _ in range(4)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, length, dim = x.shape
        h = self.config.heads
        q = self.to_q(x).view(b, n, length, h, -1).permute(0, 2, 3, 1, 4)  # [B, L, H, N, d]
        k, v = (proj(context).view(b, n, h, -1).transpose(1, 2) for proj in (self.to_k, self.to_v))
        # every query slot is its own causal sequence over the same keys: fold L into batch
        phi_q = elu_feature_map(q).reshape(b * length, h, n, -1)
        phi_k = elu_feature_map(k).unsqueeze(1).expand(b, length, h, n, -1)
        v = v.unsqueeze(1).expand(b, length, h, n, -1)
        out = causal_linear_attention(
            phi_q,
            phi_k.reshape(b * length, h, n, -1),
            v.reshape(b * length, h, n, -1),
            self.config.chunk_size,
            self.config.eps,
        )  # [B·L, H, N, d]
        out = out.view(b, length, h, n, -1).permute(0, 3, 1, 2, 4).reshape(b, n, length, dim)
        return self.dropout(self.out(out))

    def step(
        self, x: Tensor, context: Tensor, state: LinearAttentionState | None
    ) -> tuple[Tensor, LinearAttentionState]:
        b, length, dim = x.shape
        h = self.config.heads
        phi_q = elu_feature_map(self.to_q(x).view(b, length, h, -1))  # [B, L, H, d]
        phi_k = elu_feature_map(self.to_k(context).view(b, h, -1))  # [B, H, d]
        kv = phi_k.unsqueeze(-1) * self.to_v(context).view(b, h, 1, -1)  # [B, H, d, e]
        if state is not None:
            kv, phi_k = kv + state.kv, phi_k + state.k
        num = torch.einsum("blhd,bhde->blhe", phi_q, kv)
        den = torch.einsum("blhd,bhd->blh", phi_q, phi_k).clamp_min(self.config.eps)
        out = (num / den.unsqueeze(-1)).reshape(b, length, dim)
        return self.dropout(self.out(out)), LinearAttentionState(kv, phi_k)


class CausalDecoderBlock(nn.Module):
    """Pre-norm: x += self_attn(norm(x)) over the L queries of a position; x +=
    cross(norm(x), memory <= t); x += mlp(norm(x)). x [B, N, L, dim]."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = (nn.LayerNorm(config.dim) for _ in "abc")
        self_config = AttentionConfig(config.dim, config.heads, "softmax", dropout=config.dropout)
        self.self_attn = MultiHeadAttention(self_config)
        self.cross = PrefixCrossAttention(config.attention_config())
        self.mlp = Mlp(config)

    def _self(self, x: Tensor) -> Tensor:
        """x [..., L, dim]: attention among the L queries of each position."""
        flat = self.norm_self(x).reshape(-1, *x.shape[-2:])
        return x + self.self_attn(flat).view_as(x)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        x = self._self(x)
        x = x + self.cross(self.norm_cross(x), memory)
        return x + self.mlp(self.norm_mlp(x))

    def step(
        self, x: Tensor, memory: Tensor, state: LinearAttentionState | None
    ) -> tuple[Tensor, LinearAttentionState]:
        x = self._self(x)
        out, state = self.cross.step(self.norm_cross(x), memory, state)
        x = x + out
        return x + self.mlp(self.norm_mlp(x)), state


class CausalState(NamedTuple):
    """What `CausalOadTR.step` carries from frame to frame: every block's running sums."""

    encoder: list[LinearAttentionState]
    decoder: list[LinearAttentionState]


class CausalOadTR(nn.Module):
    def __init__(self, config: OadTRConfig, input_dim: int, num_classes: int):
        super().__init__()
        if not config.causal or config.attention != "linear":
            raise ValueError("CausalOadTR needs an OadTR config with causal: true, linear")
        self.config, self.input_dim, self.num_classes = config, input_dim, num_classes
        dim = config.dim
        self.embed = nn.Sequential(FeatureScale(input_dim), nn.Linear(input_dim, dim))
        layers = TransformerConfig(
            dim=dim,
            depth=config.encoder_layers,
            heads=config.heads,
            attention="linear",
            dropout=config.dropout,
            position="none",
            gradient_checkpointing=config.gradient_checkpointing,
            encoder_causal=True,
        )
        self.encoder = TransformerEncoder(layers)
        self.blocks = nn.ModuleList()
        if config.future:
            self.queries = nn.Parameter(torch.zeros(config.future, dim))
            nn.init.normal_(self.queries, std=0.02)
            self.blocks.extend(CausalDecoderBlock(layers) for _ in range(config.decoder_layers))
            self.norm = nn.LayerNorm(dim)
            self.classify_future = nn.Linear(dim, num_classes)
        self.classify = nn.Linear(2 * dim if config.future else dim, num_classes)

    def _heads(self, memory: Tensor, decoded: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """memory [..., dim], decoded [..., ℓ, dim] -> (current [..., K], future [..., ℓ, K])"""
        if decoded is None:
            return self.classify(memory), None
        decoded = self.norm(decoded)
        current = self.classify(torch.cat([memory, decoded.mean(dim=-2)], dim=-1))
        return current, self.classify_future(decoded)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """features [B, N, D] -> (current logits [B, N, K], future logits [B, N, ℓ, K] or None
        without a decoder); row t sees frames <= t only."""
        memory = self.encoder(self.embed(features))  # [B, N, dim], causal
        if not self.blocks:
            return self._heads(memory, None)
        b, n, _ = memory.shape
        x = self.queries.expand(b, n, -1, -1)
        for block in self.blocks:
            x = block(x, memory)
        return self._heads(memory, x)

    def step(
        self, feature: Tensor, state: CausalState | None = None
    ) -> tuple[Tensor, Tensor | None, CausalState]:
        """feature [B, D] of the next frame, the state after the frames before it (None: a
        first frame) -> (current logits [B, K], future logits [B, ℓ, K] or None, the state).
        Equals row t of `forward` over the stream (eval mode)."""
        memory, encoder_states = self.encoder.step(
            self.embed(feature), None if state is None else state.encoder
        )
        decoder_states: list[LinearAttentionState] = []
        decoded = None
        if self.blocks:
            decoded = self.queries.expand(feature.shape[0], -1, -1)
            for i, block in enumerate(self.blocks):
                assert isinstance(block, CausalDecoderBlock)
                before = None if state is None else state.decoder[i]
                decoded, after = block.step(decoded, memory, before)
                decoder_states.append(after)
        current, future = self._heads(memory, decoded)
        return current, future, CausalState(encoder_states, decoder_states)
