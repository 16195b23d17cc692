"""Pre-norm Transformer encoder and decoder stacks over `MultiHeadAttention`.

    encoder block: h = norm(x);  x += attn(q = k = h + pos, v = h)     causal if encoder_causal
                   x += mlp(norm(x))
    decoder block: h = norm(x);  x += self_attn(q = k = h + query_pos, v = h)   causal by default
                   h = norm(x);  x += cross_attn(q = h + query_pos, k = context + pos, v = context)
                   x += mlp(norm(x))
    stack:         x + position -> dropout -> blocks -> norm

The stacks take features, not token ids: x [B, N, dim] -> [B, N, dim].

Positions come in two ways. `position` (config) is added once to the input sequence. `pos` and
`query_pos` (forward arguments, default none) are added inside every block to the queries and
keys but not to the values, as in DETR (Carion et al. 2020): the image features' 2-D
positions (`pos`, e.g. `SinePosition2d`) and the learned object queries (`query_pos`) steer
where each layer looks without being mixed into what it passes on. For DETR set
`decoder_causal: false`, so the object queries attend to each other freely; `self_attn_mask`
(a decoder forward argument) blocks chosen query pairs instead, as DN-DETR's denoising groups
need. For cross-attention to a context of another width (a text encoder's, in latent
diffusion) set `context_dim`.

A causal linear encoder (`encoder_causal: true`, `attention: linear`, `position: none`) also
runs as a recurrence, one token at a time (`TransformerEncoder.step`): each block carries its
attention's running sums, so a token costs the same at position 10 or 10,000.

Gradient checkpointing (`gradient_checkpointing: true`): in training with grad enabled, each
block runs under `torch.utils.checkpoint.checkpoint(use_reentrant=False)`, which keeps only
the block's inputs and recomputes its activations in backward. The RNG state is restored for
the recomputation, so dropout masks and gradients equal those of the unchecked model. The last
block is left out: backward starts with it, so its recomputed activations would be alive at
the same moment as the stored ones are; checkpointing it costs a forward and lowers no peak.
With softmax attention the checkpoint is selective: the fused SDPA kernel's outputs are kept
(one [B, H, N, D] tensor and a log-sum-exp per attention), so backward recomputes the cheap
O(N) part of a block and not its O(N²) attention. (SDPA with dropout runs as its decomposed
math form, which is recomputed like the rest.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from components.config import require
from components.nn.attention import (
    AttentionConfig,
    AttentionKind,
    LinearAttentionState,
    MultiHeadAttention,
)
from components.nn.positional import PositionEmbedding, PositionKind


@dataclass
class TransformerConfig:
    dim: int = 256
    depth: int = 4  # blocks
    heads: int = 4
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * dim
    attention: AttentionKind = "softmax"
    dropout: float = 0.0  # training only: embeddings, attention and MLP outputs
    position: PositionKind = "sinusoidal"
    max_len: int = 2048  # longest sequence the position table covers
    gradient_checkpointing: bool = False
    chunk_size: int = 64  # causal linear attention, see AttentionConfig
    encoder_causal: bool = False  # encoder self-attention: token i sees tokens j <= i
    decoder_causal: bool = True  # decoder self-attention; false: queries see each other (DETR)
    context_dim: int | None = None  # decoder cross-attention: the context's width (None = dim)

    def __post_init__(self) -> None:
        require(self.depth >= 1, "depth", self.depth, "an int >= 1")
        require(
            self.context_dim is None or self.context_dim >= 1,
            "context_dim",
            self.context_dim,
            "an int >= 1 or null (= dim)",
        )
        require(self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "a float > 0")
        require(self.max_len >= 1, "max_len", self.max_len, "an int >= 1")
        require(
            self.position != "sinusoidal" or self.dim % 2 == 0,
            "dim",
            self.dim,
            "an even int for sinusoidal positions",
        )
        self.attention_config()  # checks dim, heads, attention, dropout and chunk_size

    def attention_config(
        self, causal: bool = False, context_dim: int | None = None
    ) -> AttentionConfig:
        return AttentionConfig(
            dim=self.dim,
            heads=self.heads,
            kind=self.attention,
            causal=causal,
            dropout=self.dropout,
            chunk_size=self.chunk_size,
            kdim=context_dim,
            vdim=context_dim,
        )


_aten = torch.ops.aten
# SDPA's fused kernels (the CPU one, and CUDA's flash, memory-efficient and cuDNN ones)
_SDPA_KERNELS = {
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}


def _keep_sdpa(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective checkpointing policy: save SDPA's outputs, recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if op in _SDPA_KERNELS else CheckpointPolicy.PREFER_RECOMPUTE


class Mlp(nn.Sequential):
    """[B, N, dim] -> [B, N, dim] through a GELU hidden layer of mlp_ratio * dim."""

    def __init__(self, config: TransformerConfig):
        hidden = round(config.mlp_ratio * config.dim)
        super().__init__(
            nn.Linear(config.dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, config.dim),
            nn.Dropout(config.dropout),
        )


def _with_pos(t: Tensor, pos: Tensor | None) -> Tensor:
    return t if pos is None else t + pos


class EncoderBlock(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm_attn, self.norm_mlp = nn.LayerNorm(config.dim), nn.LayerNorm(config.dim)
        self.attn = MultiHeadAttention(config.attention_config(causal=config.encoder_causal))
        self.mlp = Mlp(config)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, pos: Tensor | None = None
    ) -> Tensor:
        """x [B, N, dim], key_padding_mask bool [B, N] (True = padded), pos [B, N, dim] or
        [N, dim] (added to queries and keys) -> [B, N, dim]"""
        h = self.norm_attn(x)
        qk = _with_pos(h, pos)
        x = x + self.attn(qk, qk, h, key_padding_mask=key_padding_mask)
        return x + self.mlp(self.norm_mlp(x))

    def step(
        self, x: Tensor, state: LinearAttentionState | None = None
    ) -> tuple[Tensor, LinearAttentionState]:
        """One token of a causal linear block: x [B, dim] -> ([B, dim], state), see
        `MultiHeadAttention.step`."""
        out, state = self.attn.step(self.norm_attn(x), state)
        x = x + out
        return x + self.mlp(self.norm_mlp(x)), state


class DecoderBlock(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm_self = nn.LayerNorm(config.dim)
        self.norm_cross = nn.LayerNorm(config.dim)
        self.norm_mlp = nn.LayerNorm(config.dim)
        self.self_attn = MultiHeadAttention(config.attention_config(causal=config.decoder_causal))
        cross = config.attention_config(context_dim=config.context_dim)
        self.cross_attn = MultiHeadAttention(cross)
        self.mlp = Mlp(config)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        key_padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        query_pos: Tensor | None = None,
        pos: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, N, dim], context [B, S, context_dim]; masks bool [B, N] and [B, S], True =
        padded; query_pos [B, N, dim] or [N, dim] (added to the queries of both attentions and
        the keys of self-attention), pos [B, S, context_dim] or [S, context_dim] (added to the
        context's keys); self_attn_mask bool [N, N] or [B, N, N], True = query i may not see
        query j, for the self-attention only (softmax). Returns [B, N, dim]."""
        h = self.norm_self(x)
        qk = _with_pos(h, query_pos)
        x = x + self.self_attn(
            qk, qk, h, key_padding_mask=key_padding_mask, attn_mask=self_attn_mask
        )
        h = _with_pos(self.norm_cross(x), query_pos)
        x = x + self.cross_attn(
            h, _with_pos(context, pos), context, key_padding_mask=context_padding_mask
        )
        return x + self.mlp(self.norm_mlp(x))


class _Stack(nn.Module):
    """Position embedding, blocks (checkpointed if configured), final norm."""

    def __init__(self, config: TransformerConfig, blocks: Iterable[nn.Module]):
        super().__init__()
        self.config = config
        self.position = PositionEmbedding(config.position, config.dim, config.max_len)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(config.dim)

    def _run(self, x: Tensor, *block_args: Tensor | None) -> Tensor:
        x = self.dropout(self.position(x))
        # Checkpointing only pays off when backward follows; in eval or no_grad it would only
        # add overhead.
        use_checkpoint = (
            self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        )
        options: dict = {"use_reentrant": False}
        if self.config.attention == "softmax":  # linear attention has no costly kernel to keep
            options["context_fn"] = functools.partial(
                create_selective_checkpoint_contexts, _keep_sdpa
            )
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if use_checkpoint and i < last:
                x = checkpoint(block, x, *block_args, **options)
            else:
                x = block(x, *block_args)
        return self.norm(x)


class TransformerEncoder(_Stack):
    """Stack of `depth` pre-norm encoder blocks (bidirectional self-attention)."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config, (EncoderBlock(config) for _ in range(config.depth)))

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, pos: Tensor | None = None
    ) -> Tensor:
        """x [B, N, dim], key_padding_mask bool [B, N] (True = padded), pos [B, N, dim] or
        [N, dim] (every block adds it to its queries and keys) -> [B, N, dim]"""
        return self._run(x, key_padding_mask, pos)

    def step(
        self, x: Tensor, states: list[LinearAttentionState] | None = None
    ) -> tuple[Tensor, list[LinearAttentionState]]:
        """A causal linear encoder as a recurrence: token x [B, dim] and every block's state
        after the tokens before it (None: the first) -> (its output [B, dim], the states).
        Equals row i of `forward` over the sequence; needs `position: none` (a running state
        knows no index) and eval mode (no dropout)."""
        if self.config.position != "none":
            raise ValueError(
                f"step needs position: none; this encoder adds {self.config.position} "
                "positions by index, which a running state does not keep"
            )
        new_states = []
        for i, block in enumerate(self.blocks):
            assert isinstance(block, EncoderBlock)
            x, state = block.step(x, None if states is None else states[i])
            new_states.append(state)
        return self.norm(x), new_states


class TransformerDecoder(_Stack):
    """Stack of `depth` pre-norm decoder blocks (self-attention, causal unless
    `decoder_causal: false`, + cross-attention)."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config, (DecoderBlock(config) for _ in range(config.depth)))

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        key_padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        query_pos: Tensor | None = None,
        pos: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, N, dim], context [B, S, context_dim] (e.g. encoder output); masks bool [B, N]
        and [B, S], True = padded; query_pos [B, N, dim] or [N, dim], pos [B, S, context_dim]
        or [S, context_dim], self_attn_mask bool [N, N] or [B, N, N] (True = blocked), used in
        every block as in `DecoderBlock`. Returns [B, N, dim]."""
        return self._run(
            x, context, key_padding_mask, context_padding_mask, query_pos, pos, self_attn_mask
        )
