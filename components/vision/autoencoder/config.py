"""The autoencoder stage's config: network, quantizer (VQ), losses, training.

    kind: kl              KL-VAE (diagonal Gaussian posterior), Stable Diffusion's autoencoder
    kind: vq              VQ-VAE (EMA codebook, straight-through estimator)

Sizes: `downsample` (a power of two) halves the image side log2(downsample) times, so a 32×32
image with downsample 4 and latent_channels 4 has latents [4, 8, 8]. Level i of the encoder
(and, mirrored, of the decoder) has min(channels · 2^i, max_channels) channels.

Checks that need another section (`disc_start` against `train.steps`) are in
`AutoencoderConfig.__post_init__`, so a bad value fails before any image is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from components.config import require, runtime_field
from components.train.config import Device, TrainConfig, is_number

Kind = Literal["kl", "vq"]
Reconstruction = Literal["l1", "l2"]
Posterior = Literal["sample", "mean"]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class NetworkConfig:
    """The conv encoder/decoder (shared by both kinds)."""

    channels: int = 32  # width of the first level
    max_channels: int = 128  # cap on the doubling per level
    downsample: int = 4  # image side / latent side: a power of two (1 = no downsampling)
    res_blocks: int = 1  # ResBlocks per level (the decoder has one more, as in LDM)
    latent_channels: int = 4
    attention: bool = True  # the mid-block's self-attention (components.nn), as in LDM
    attention_heads: int = 1
    norm_groups: int = 8  # GroupNorm groups; must divide every level's channels
    dropout: float = 0.0
    # Recompute each block's activations in backward instead of storing them: less memory,
    # the same gradients (a runtime knob: it changes how a step runs, not what it computes).
    gradient_checkpointing: bool = runtime_field(False)

    def __post_init__(self) -> None:
        for key in ("channels", "max_channels", "downsample", "res_blocks", "latent_channels"):
            value = getattr(self, key)
            require(_positive_int(value), key, value, "an int >= 1")
        d = self.downsample
        require(d & (d - 1) == 0, "downsample", d, "a power of two (1, 2, 4, 8, ...)")
        require(
            self.max_channels >= self.channels,
            "max_channels",
            self.max_channels,
            f"an int >= channels = {self.channels}",
        )
        for width in self.widths():
            require(
                width % self.norm_groups == 0,
                "norm_groups",
                self.norm_groups,
                f"a divisor of every level's channels {self.widths()}",
            )
        require(
            _positive_int(self.attention_heads),
            "attention_heads",
            self.attention_heads,
            "an int >= 1",
        )
        top = self.widths()[-1]
        require(
            top % self.attention_heads == 0,
            "attention_heads",
            self.attention_heads,
            f"a divisor of the mid-block's channels {top}",
        )
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a float in [0, 1)")

    @property
    def levels(self) -> int:
        """Resolution levels: log2(downsample) + 1."""
        return int(math.log2(self.downsample)) + 1

    def widths(self) -> list[int]:
        """Channels per level, first (full resolution) to last."""
        return [min(self.channels * 2**i, self.max_channels) for i in range(self.levels)]


@dataclass
class QuantizerConfig:
    """The VQ-VAE's codebook (kind: vq only)."""

    codebook_size: int = 512  # K codes
    code_dim: int | None = None  # d; None: latent_channels. Smaller: factorised codes
    # (ViT-VQGAN): the latent is projected down to d for the lookup and back up after it
    l2_normalize: bool = False  # look up by cosine similarity (codes and inputs on the sphere)
    beta: float = 0.25  # commitment weight: beta ||z - sg(q)||^2
    ema: bool = True  # codebook as an EMA of the vectors assigned to it (else learnt by loss)
    decay: float = 0.99  # EMA decay
    eps: float = 1e-5  # Laplace smoothing of the EMA counts
    kmeans_init: bool = True  # codes start as k-means centroids of the first batch's latents
    kmeans_iters: int = 10
    restart_threshold: float = 1.0  # a code whose EMA count falls below this is dead: it is
    # restarted at a random recent encoder output. 0: never restart
    recent: int = 4096  # encoder outputs remembered for restarts

    def __post_init__(self) -> None:
        require(
            _positive_int(self.codebook_size) and self.codebook_size >= 2,
            "codebook_size",
            self.codebook_size,
            "an int >= 2",
        )
        require(
            self.code_dim is None or _positive_int(self.code_dim),
            "code_dim",
            self.code_dim,
            "an int >= 1 or null (= latent_channels)",
        )
        require(is_number(self.beta) and self.beta >= 0, "beta", self.beta, "a float >= 0")
        require(
            is_number(self.decay) and 0 < self.decay < 1, "decay", self.decay, "a float in (0, 1)"
        )
        require(is_number(self.eps) and self.eps > 0, "eps", self.eps, "a float > 0")
        require(_positive_int(self.kmeans_iters), "kmeans_iters", self.kmeans_iters, "an int >= 1")
        require(
            is_number(self.restart_threshold) and self.restart_threshold >= 0,
            "restart_threshold",
            self.restart_threshold,
            "a float >= 0",
        )
        require(_positive_int(self.recent), "recent", self.recent, "an int >= 1")


@dataclass
class LossConfig:
    """Reconstruction + KL (kl) or commitment (vq) + the optional PatchGAN term."""

    reconstruction: Reconstruction = "l1"  # per-pixel mean
    kl_weight: float = 1e-4  # times the per-element mean KL (kind: kl)
    discriminator: bool = True  # train a PatchGAN against the decoder
    disc_start: int = 0  # optimizer step at which the discriminator (and its term) starts
    disc_weight: float = 0.5  # times the adaptive weight
    disc_layers: int = 2  # stride-2 conv layers of the PatchGAN
    disc_channels: int = 32
    disc_lr_scale: float = 1.0  # the discriminator's LR = schedule x this
    disc_betas: tuple[float, float] = (0.5, 0.9)  # AdamW betas of the discriminator
    adaptive_max: float = 1e4  # clamp of the adaptive weight (as taming/LDM)

    def __post_init__(self) -> None:
        for key in ("kl_weight", "disc_weight", "adaptive_max"):
            value = getattr(self, key)
            require(is_number(value) and value >= 0, key, value, "a float >= 0")
        require(
            isinstance(self.disc_start, int)
            and not isinstance(self.disc_start, bool)
            and self.disc_start >= 0,
            "disc_start",
            self.disc_start,
            "an int >= 0",
        )
        require(_positive_int(self.disc_layers), "disc_layers", self.disc_layers, "an int >= 1")
        require(
            _positive_int(self.disc_channels), "disc_channels", self.disc_channels, "an int >= 1"
        )
        scale = self.disc_lr_scale
        require(is_number(scale) and scale > 0, "disc_lr_scale", scale, "a float > 0")
        betas = self.disc_betas
        require(
            len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
            "disc_betas",
            betas,
            "two floats in [0, 1)",
        )


@dataclass
class EvalConfig:
    """What each validation draws and measures (the engine's eval hook)."""

    grid_images: int = 16  # val images shown beside their reconstructions
    prior_samples: int = 16  # kind kl: images decoded from N(0, std²) latents (std: the
    # latents' own, so the draws are what a diffusion sampler's first noise decodes to)
    metric_images: int = 512  # val images for PSNR/SSIM/codebook usage during training
    # (the final metrics use the whole val set)
    scale_images: int = 2048  # training images whose latents set the scale factor


@dataclass
class AutoencoderConfig:
    kind: Kind = "kl"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        require(self.kind in ("kl", "vq"), "kind", self.kind, "one of kl|vq")
        if self.loss.discriminator:
            require(
                self.loss.disc_start < self.train.steps,
                "loss.disc_start",
                self.loss.disc_start,
                f"an int < train.steps = {self.train.steps} "
                "(else the discriminator never trains; or set loss.discriminator: false)",
            )
        for key in ("grid_images", "prior_samples", "metric_images", "scale_images"):
            value = getattr(self.eval, key)
            require(_positive_int(value), f"eval.{key}", value, "an int >= 1")


@dataclass
class EncodeLatentsConfig:
    """The encode_latents stage: which latents a diffusion model trains on."""

    posterior: Posterior = "sample"  # kind kl: a draw of the posterior (as LDM trains on), or
    # its mean; kind vq: always the quantized codes
    seed: int = 0  # of the posterior draws
    batch_size: int = runtime_field(256)
    device: Device = runtime_field("auto")

    def __post_init__(self) -> None:
        require(
            self.posterior in ("sample", "mean"), "posterior", self.posterior, "one of sample|mean"
        )
        require(_positive_int(self.batch_size), "batch_size", self.batch_size, "an int >= 1")
        ok = isinstance(self.seed, int) and not isinstance(self.seed, bool)
        require(ok and 0 <= self.seed < 2**31, "seed", self.seed, "an int in [0, 2**31)")
        require(
            self.device in get_args(Device),
            "device",
            self.device,
            "one of " + "|".join(get_args(Device)),
        )
