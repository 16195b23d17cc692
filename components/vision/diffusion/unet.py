"""The denoising network of latent diffusion: a UNet in the manner of Rombach et al. 2022 (LDM),
conditioned on the timestep and on a text context (cross-attention) or a class label.

    x [B, C, H, W] (noisy latents), t [B] -> out [B, C, H, W] (what the prediction target says:
    noise, x0 or v; the network does not know which)

    emb   = MLP(sinusoidal(t))  (+ label_embed(labels))          [B, 4·base]
    h     = conv3x3(x)                                            [B, base, H, W]
    down: per level l (width base·mult[l]): blocks_per_level × (ResBlock(h, emb)
          [, SpatialTransformer(h, context)] if l in attention_levels), then a stride-2 conv
          (not after the last level); every block's output is kept as a skip
    mid:  ResBlock, SpatialTransformer, ResBlock                  [B, base·mult[-1], H/f, W/f]
    up:   per level, deepest first: (blocks_per_level + 1) × (ResBlock(cat(h, skip), emb)
          [, SpatialTransformer]), then nearest x2 + conv3x3 (not after level 0)
    out   = conv3x3(silu(GroupNorm(h)))                           [B, C, H, W], zero at init

f = 2^(len(channel_mult) - 1): H and W must be multiples of it, so every skip meets an
upsampled map of its own size.

ResBlocks are `components.nn.ResBlock` with the timestep embedding as the scale-shift condition
(h = norm(h)·(1 + scale) + shift). A SpatialTransformer is

    tokens = proj_in(GroupNorm(x)) as [B, H·W, C]
    tokens = DecoderBlock(tokens, context, context_mask)   pre-norm: self-attention over the
             H·W positions, cross-attention to context [B, L, context_dim], MLP
             (EncoderBlock, self-attention + MLP, when there is no context)
    out    = x + proj_out(tokens as [B, C, H, W])          proj_out zero at init

with the blocks of `components.nn.transformer` (no position embedding: the convolutions before
it already tell the positions apart). The zero-initialised last layers (the output conv,
proj_out, each ResBlock's last conv) make the untrained network output exactly zero and each
block start as its skip path.

Conditions: `context` (and its padding mask, True = padded token) is required iff the config
has `context_dim`; `labels` (int64 [B] in 0..num_classes, where num_classes is the null label
for classifier-free guidance) iff it has `num_classes`. The unconditional branch of text
guidance is the encoding of the empty prompt, so a text UNet always takes a context.

t is in the schedule's step units (0..T-1, float allowed): the sinusoidal embedding's periods
span 2π..10000·2π, made for integer steps up to ~1000. A continuous-time schedule with t in
[0, 1] should pass t·1000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from components.config import require, runtime_field
from components.nn.attention import AttentionKind
from components.nn.resblock import ResBlock, ResBlockConfig, Upsample
from components.nn.transformer import DecoderBlock, EncoderBlock, TransformerConfig

MAX_PERIOD = 10000.0  # longest period of the timestep embedding, over 2π


@dataclass
class UNetConfig:
    in_channels: int = 4  # latent channels; the output has as many
    base_channels: int = 64  # width of level 0; the timestep embedding is 4x this
    channel_mult: tuple[int, ...] = (1, 2)  # level l has base_channels · channel_mult[l]
    blocks_per_level: int = 2  # ResBlocks per level going down (one more going up)
    attention_levels: tuple[int, ...] = (0, 1)  # levels (0 = full latent size) with attention
    heads: int = 4
    attention: AttentionKind = "softmax"
    context_dim: int | None = None  # text encoder width; None = no cross-attention
    num_classes: int | None = None  # class labels 0..num_classes-1, num_classes = null label
    groups: int = 32  # GroupNorm groups; must divide every level's width
    dropout: float = 0.0  # training only: ResBlocks, attention and MLP outputs
    # Recompute each block's activations in backward instead of storing them: less memory,
    # the same outputs and gradients (a runtime knob: it changes how a step runs, not what).
    gradient_checkpointing: bool = runtime_field(False)

    def __post_init__(self) -> None:
        for key in ("in_channels", "base_channels", "blocks_per_level", "heads", "groups"):
            value = getattr(self, key)
            require(_positive_int(value), key, value, "an int >= 1")
        require(
            self.base_channels % 2 == 0,
            "base_channels",
            self.base_channels,
            "an even int (the sinusoidal timestep embedding has base_channels entries)",
        )
        require(
            len(self.channel_mult) >= 1 and all(map(_positive_int, self.channel_mult)),
            "channel_mult",
            self.channel_mult,
            "a non-empty list of ints >= 1",
        )
        levels = len(self.channel_mult)
        require(
            all(isinstance(a, int) and 0 <= a < levels for a in self.attention_levels)
            and len(set(self.attention_levels)) == len(self.attention_levels),
            "attention_levels",
            self.attention_levels,
            f"distinct levels in 0..{levels - 1} (one per channel_mult entry)",
        )
        for width in self.widths():
            require(
                width % self.groups == 0,
                "groups",
                self.groups,
                f"a divisor of every level's width {self.widths()}",
            )
        attended = sorted({self.widths()[a] for a in self.attention_levels} | {self.widths()[-1]})
        for width in attended:
            require(
                width % self.heads == 0,
                "heads",
                self.heads,
                f"a divisor of the attended widths {attended} (attention levels and mid block)",
            )
        require(
            self.attention in ("softmax", "linear"),
            "attention",
            self.attention,
            "'softmax' or 'linear'",
        )
        for key in ("context_dim", "num_classes"):
            value = getattr(self, key)
            require(value is None or _positive_int(value), key, value, "an int >= 1 or null")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a float in [0, 1)")

    def widths(self) -> list[int]:
        """Channels of each level, full latent size first."""
        return [self.base_channels * m for m in self.channel_mult]

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.base_channels

    @property
    def downsample(self) -> int:
        """f: latent side / deepest feature map's side; H and W must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def timestep_embedding(t: Tensor, dim: int, max_period: float = MAX_PERIOD) -> Tensor:
    """t [B] (int or float) -> float32 [B, dim], laid out as `components.nn.sinusoidal_table`
    (row t of that table for an integer t):

        emb[2i] = sin(t / max_period^(2i/dim)),   emb[2i+1] = cos(t / max_period^(2i/dim))
    """
    exponent = torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) / dim
    angle = t.float()[:, None] * torch.exp(-math.log(max_period) * exponent)  # [B, dim/2]
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)


class Downsample(nn.Module):
    """Stride-2 conv3x3 (padding 1, as the LDM UNet): [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class SpatialTransformer(nn.Module):
    """x [B, C, H, W] (+ context [B, L, context_dim], mask bool [B, L]) -> [B, C, H, W]: the
    module docstring's self- and cross-attention block over the H·W positions, as a residual."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.norm = nn.GroupNorm(config.groups, channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        block = TransformerConfig(
            dim=channels,
            depth=1,
            heads=config.heads,
            attention=config.attention,
            dropout=config.dropout,
            position="none",
            decoder_causal=False,  # every position sees every other
            context_dim=config.context_dim,
        )
        self.block: EncoderBlock | DecoderBlock = (
            EncoderBlock(block) if config.context_dim is None else DecoderBlock(block)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        assert self.proj_out.bias is not None  # Conv2d(bias=True)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [B, H·W, C]
        if isinstance(self.block, DecoderBlock):
            assert context is not None  # UNet.forward checked it
            tokens = self.block(tokens, context, context_padding_mask=context_mask)
        else:
            tokens = self.block(tokens)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """See the module docstring. forward(x [B, C, H, W], t [B], context, context_mask, labels)
    -> [B, C, H, W]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        widths, bpl = config.widths(), config.blocks_per_level
        base, emb_dim = config.base_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(
            nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_embed = (
            None if config.num_classes is None else nn.Embedding(config.num_classes + 1, emb_dim)
        )
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)

        # Each stage is one step of the ladder: a down stage yields one skip, an up stage
        # takes one.
        self.down = nn.ModuleList()
        skips, ch = [widths[0]], widths[0]
        for level, width in enumerate(widths):
            for _ in range(bpl):
                stage: list[nn.Module] = [self._res(ch, width)]
                ch = width
                if level in config.attention_levels:
                    stage.append(SpatialTransformer(ch, config))
                self.down.append(nn.ModuleList(stage))
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.mid = nn.ModuleList(
            [self._res(ch, ch), SpatialTransformer(ch, config), self._res(ch, ch)]
        )
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(bpl + 1):
                stage = [self._res(ch + skips.pop(), width)]
                ch = width
                if level in config.attention_levels:
                    stage.append(SpatialTransformer(ch, config))
                if level > 0 and i == bpl:
                    stage.append(Upsample(ch))
                self.up.append(nn.ModuleList(stage))
        self.norm_out = nn.GroupNorm(config.groups, ch)
        self.conv_out = nn.Conv2d(ch, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        assert self.conv_out.bias is not None
        nn.init.zeros_(self.conv_out.bias)

    def _res(self, c_in: int, c_out: int) -> ResBlock:
        cfg = self.config
        return ResBlock(
            ResBlockConfig(
                c_in, c_out, cond_dim=cfg.time_embed_dim, groups=cfg.groups, dropout=cfg.dropout
            )
        )

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """x [B, C, H, W]; t [B] or [] (one step for the batch), int or float; context
        [B, L, context_dim] and context_mask bool [B, L] (True = padded token, ignored), iff
        the config has context_dim (the mask optional); labels int64 [B] in 0..num_classes
        (num_classes = null) iff it has num_classes. Returns [B, C, H, W]."""
        t = self._check(x, t, context, context_mask, labels)
        emb = self.time_embed(
            timestep_embedding(t, self.config.base_channels).to(self.conv_in.weight.dtype)
        )
        if self.label_embed is not None:
            assert labels is not None
            emb = emb + self.label_embed(labels)
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, context, context_mask)
            skips.append(h)
        h = self._run(self.mid, h, emb, context, context_mask)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _run(
        self,
        stage: nn.Module,
        h: Tensor,
        emb: Tensor,
        context: Tensor | None,
        context_mask: Tensor | None,
    ) -> Tensor:
        # Checkpointing only pays off when backward follows; in eval or no_grad it would only
        # add a recomputation.
        use_checkpoint = (
            self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        )
        for block in stage.children():  # a stage is a ModuleList, run in order
            args: tuple[Tensor | None, ...]
            if isinstance(block, ResBlock):
                args = (h, emb)
            elif isinstance(block, SpatialTransformer):
                args = (h, context, context_mask)
            else:  # a resampling conv: cheap to keep, nothing to recompute
                h = block(h)
                continue
            # use_reentrant=False restores the RNG state for the recomputation, so dropout
            # masks, and with them the gradients, equal those of the unchecked run.
            h = checkpoint(block, *args, use_reentrant=False) if use_checkpoint else block(*args)
        return h

    def _check(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor | None,
        context_mask: Tensor | None,
        labels: Tensor | None,
    ) -> Tensor:
        """Raise a ValueError on inputs the config does not take; return t as [B]."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"x of shape {list(x.shape)}: expected [B, {cfg.in_channels}, H, W] "
                f"(in_channels = {cfg.in_channels})"
            )
        b, _, height, width = x.shape
        f = cfg.downsample
        if height % f or width % f:
            raise ValueError(
                f"x of shape {list(x.shape)}: H = {height} and W = {width} must be multiples of "
                f"{f} = 2^(len(channel_mult) - 1), for channel_mult {list(cfg.channel_mult)}"
            )
        if t.ndim == 0:
            t = t.expand(b)
        if tuple(t.shape) != (b,):
            raise ValueError(f"t of shape {list(t.shape)}: expected [{b}] (one step per sample)")
        if cfg.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError(
                    "this UNet has no cross-attention (context_dim: null): pass no context"
                )
        elif context is None:
            raise ValueError(
                f"this UNet is text-conditioned (context_dim = {cfg.context_dim}): pass context "
                f"[B, L, {cfg.context_dim}] (the empty prompt's for the unconditional branch)"
            )
        elif context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ValueError(
                f"context of shape {list(context.shape)}: expected [{b}, L, {cfg.context_dim}]"
            )
        elif context_mask is not None and (
            context_mask.dtype != torch.bool or tuple(context_mask.shape) != context.shape[:2]
        ):
            raise ValueError(
                f"context_mask {context_mask.dtype} {list(context_mask.shape)}: expected bool "
                f"{list(context.shape[:2])} (True = padded token)"
            )
        if cfg.num_classes is None:
            if labels is not None:
                raise ValueError("this UNet takes no class labels (num_classes: null)")
        elif labels is None:
            raise ValueError(
                f"this UNet is class-conditioned (num_classes = {cfg.num_classes}): pass labels "
                f"int64 [B] ({cfg.num_classes} = the null label, for the unconditional branch)"
            )
        elif labels.is_floating_point() or tuple(labels.shape) != (b,):
            raise ValueError(
                f"labels {labels.dtype} {list(labels.shape)}: expected int64 [{b}] in "
                f"0..{cfg.num_classes}"
            )
        return t
