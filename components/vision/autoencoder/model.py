"""Conv encoder and decoder of residual blocks, in the manner of the Stable Diffusion
(latent diffusion) autoencoder, and the KL and VQ networks built on them.

    Encoder:  x [B, C, H, W] -> conv3x3 -> per level: ResBlocks, stride-2 conv (not after the
              last) -> mid (ResBlock, self-attention, ResBlock) -> GroupNorm, SiLU, conv3x3
              -> [B, out, H/f, W/f]                                     f = downsample
    Decoder:  z [B, c, h, w] -> conv3x3 -> mid -> per level (deepest first): ResBlocks + 1,
              nearest x2 + conv3x3 (not after the last) -> GroupNorm, SiLU, conv3x3
              -> [B, C, h·f, w·f]

Images are float in [-1, 1]. The networks know no I/O and no scale factor: `KLAutoencoder`
returns the posterior's moments, `VQAutoencoder` the quantizer's output; the trained object
with its scale factor and save format is `saved.Autoencoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from components.nn.attention import AttentionConfig, MultiHeadAttention
from components.nn.resblock import ResBlock, ResBlockConfig, Upsample
from components.vision.autoencoder.config import NetworkConfig, QuantizerConfig
from components.vision.autoencoder.quantizer import Quantized, VectorQuantizer

LOGVAR_RANGE = (-30.0, 20.0)  # as LDM: exp() of the log-variance stays finite
INITIAL_LOGVAR = -4.0  # bias of the posterior's log-variance at init (KLAutoencoder)


class _Checkpointed(nn.Module):
    """Runs `blocks` in order, each under activation checkpointing when switched on."""

    def __init__(self, blocks: list[nn.Module], enabled: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.enabled = enabled

    def forward(self, x: Tensor) -> Tensor:
        use = self.enabled and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if use else block(x)
        return x


class AttentionBlock(nn.Module):
    """x + attention(GroupNorm(x)) over the H·W positions: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attention = MultiHeadAttention(AttentionConfig(dim=channels, heads=heads))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, H·W, C]
        out = self.attention(tokens).transpose(1, 2).reshape(b, c, h, w)
        return x + out


def _res(c_in: int, c_out: int, config: NetworkConfig) -> ResBlock:
    groups, dropout = config.norm_groups, config.dropout
    return ResBlock(ResBlockConfig(c_in, c_out, groups=groups, dropout=dropout))


def _mid(channels: int, config: NetworkConfig) -> list[nn.Module]:
    blocks: list[nn.Module] = [_res(channels, channels, config)]
    if config.attention:
        blocks.append(AttentionBlock(channels, config.attention_heads, config.norm_groups))
    blocks.append(_res(channels, channels, config))
    return blocks


class Downsample(nn.Module):
    """Stride-2 conv3x3 (asymmetric pad, as LDM): [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, out_channels, H/f, W/f]."""

    def __init__(self, config: NetworkConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.config = config
        widths = config.widths()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        width = widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(config.res_blocks):
                blocks.append(_res(width, level_width, config))
                width = level_width
            if level < len(widths) - 1:
                blocks.append(Downsample(width))
        blocks += _mid(width, config)
        self.body = _Checkpointed(blocks, config.gradient_checkpointing)
        self.norm_out = nn.GroupNorm(config.norm_groups, width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x)))))


class Decoder(nn.Module):
    """[B, latent_channels, h, w] -> [B, out_channels, h·f, w·f]."""

    def __init__(self, config: NetworkConfig, in_channels: int, out_channels: int):
        super().__init__()
        widths = config.widths()[::-1]  # deepest first
        width = widths[0]
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        blocks: list[nn.Module] = _mid(width, config)
        for level, level_width in enumerate(widths):
            for _ in range(config.res_blocks + 1):
                blocks.append(_res(width, level_width, config))
                width = level_width
            if level < len(widths) - 1:
                blocks.append(Upsample(width))
        self.body = _Checkpointed(blocks, config.gradient_checkpointing)
        self.norm_out = nn.GroupNorm(config.norm_groups, width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> Tensor:
        """The weight the adaptive GAN weight measures gradient norms at."""
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(z)))))


class DiagonalGaussian:
    """The KL-VAE's posterior N(mean, diag(exp(logvar))) over latents [B, c, h, w]."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per latent element, [B, c, h, w]: ½(μ² + σ² − 1 − log σ²)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)


@dataclass
class KLOutput:
    reconstruction: Tensor  # [B, C, H, W]
    posterior: DiagonalGaussian


@dataclass
class VQOutput:
    reconstruction: Tensor  # [B, C, H, W]
    quantized: Quantized


class KLAutoencoder(nn.Module):
    """Encoder -> 1x1 conv to 2c moments -> posterior -> (sample) -> 1x1 conv -> decoder."""

    kind = "kl"

    def __init__(self, config: NetworkConfig, image_channels: int):
        super().__init__()
        c = config.latent_channels
        self.encoder = Encoder(config, image_channels, 2 * c)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        # The posterior starts narrow (σ ≈ e^-2): at σ = 1 the noise of an untrained encoder's
        # small means drowns them, and a short run spends its steps learning to shrink σ
        # before the decoder can use the latents at all. The KL term widens it where it can.
        assert self.quant_conv.bias is not None
        with torch.no_grad():
            self.quant_conv.bias[c:].fill_(INITIAL_LOGVAR)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(config, c, image_channels)

    def posterior(self, x: Tensor) -> DiagonalGaussian:
        """x [B, C, H, W] in [-1, 1] -> q(z | x) over [B, c, H/f, W/f]."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def latents(self, x: Tensor, sample: bool, generator: torch.Generator | None = None) -> Tensor:
        """Unscaled latents [B, c, h, w]: a posterior draw, or its mean."""
        posterior = self.posterior(x)
        return posterior.sample(generator) if sample else posterior.mean

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents [B, c, h, w] -> images [B, C, h·f, w·f] (about [-1, 1])."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor, sample: bool = True) -> KLOutput:
        posterior = self.posterior(x)
        z = posterior.sample() if sample else posterior.mean
        return KLOutput(self.decode(z), posterior)


class VQAutoencoder(nn.Module):
    """Encoder -> 1x1 conv -> vector quantizer -> 1x1 conv -> decoder. The latents are the
    quantized vectors [B, c, h, w] (what a latent diffusion model on a VQ space uses)."""

    kind = "vq"

    def __init__(self, config: NetworkConfig, quantizer: QuantizerConfig, image_channels: int):
        super().__init__()
        c = config.latent_channels
        self.encoder = Encoder(config, image_channels, c)
        self.quant_conv = nn.Conv2d(c, c, 1)
        self.quantizer = VectorQuantizer(quantizer, c)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(config, c, image_channels)

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, C, H, W] -> the quantizer's output for the encoder's [B, c, h, w]."""
        return self.quantizer(self.quant_conv(self.encoder(x)))

    def latents(self, x: Tensor, sample: bool = False, generator=None) -> Tensor:
        """The quantized latents [B, c, h, w] (`sample` is the KL-VAE's: ignored)."""
        return self.quantize(x).quantized

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor) -> VQOutput:
        quantized = self.quantize(x)
        return VQOutput(self.decode(quantized.quantized), quantized)


def build_network(
    kind: str, network: NetworkConfig, quantizer: QuantizerConfig, image_channels: int
) -> KLAutoencoder | VQAutoencoder:
    if kind == "kl":
        return KLAutoencoder(network, image_channels)
    if kind == "vq":
        return VQAutoencoder(network, quantizer, image_channels)
    raise ValueError(f"kind = {kind!r}: expected one of kl|vq")
