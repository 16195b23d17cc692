"""The diffusion stages' configs: what `train_diffusion` trains and how `sample` and the live
previews draw.

    condition: text       prompts -> Loom's BPE tokenizer -> text encoder -> cross-attention
    condition: label      class labels (the images' first label) -> an embedding added to the
                          timestep's; no tokenizer

Sizes: the UNet's `in_channels` is the latents' channel count and is set from the latents
(`null` in params.yaml); its `context_dim` is the text encoder's `dim` (set here, never given
twice). The latent side must divide by the UNet's downsampling 2^(levels - 1): checked by the
stage against the latents it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from components.config import require, runtime_field
from components.train.config import Device, TrainConfig, is_number
from components.vision.diffusion.prediction import PredictionType
from components.vision.diffusion.samplers import SamplerConfig
from components.vision.diffusion.schedule import ScheduleConfig
from components.vision.diffusion.text_encoder import TextEncoderConfig
from components.vision.diffusion.unet import UNetConfig

Condition = Literal["text", "label"]
Weighting = Literal["uniform", "min_snr"]
PREDICTIONS = ("eps", "v", "x0")


@dataclass
class LossConfig:
    prediction: PredictionType = "eps"  # what the network outputs: noise, v or x0
    weighting: Weighting = "min_snr"  # per-timestep weight of the MSE: uniform | Min-SNR-γ
    snr_gamma: float = 5.0  # γ of Min-SNR-γ (Hang et al. 2023)
    condition_dropout: float = 0.1  # P(the null condition) in training, for guidance

    def __post_init__(self) -> None:
        require(self.prediction in PREDICTIONS, "prediction", self.prediction, "one of eps|v|x0")
        require(
            self.weighting in ("uniform", "min_snr"),
            "weighting",
            self.weighting,
            "one of uniform|min_snr",
        )
        gamma = self.snr_gamma
        require(is_number(gamma) and gamma > 0, "snr_gamma", gamma, "a float > 0")
        p = self.condition_dropout
        require(is_number(p) and 0 <= p < 1, "condition_dropout", p, "a float in [0, 1)")


@dataclass
class PreviewConfig:
    """The sample grid drawn live at every validation (the engine's eval hook)."""

    prompts: list[str] = field(default_factory=list)  # text: one grid row per prompt
    labels: list[int] = field(default_factory=list)  # label: one grid row per label
    per_prompt: int = 8  # samples per row, seeds 0..per_prompt-1
    guidance: float = 3.0
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig("ddim", 25))

    def __post_init__(self) -> None:
        require(self.per_prompt >= 1, "per_prompt", self.per_prompt, "an int >= 1")
        g = self.guidance
        require(is_number(g) and g >= 0, "guidance", g, "a float >= 0")
        for prompt in self.prompts:
            require(isinstance(prompt, str), "prompts", prompt, "a list of strings")


@dataclass
class DiffusionConfig:
    condition: Condition = "text"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    word2vec_init: bool = False  # text: token embeddings start from the word2vec input's
    # text: caption phrases ("yellow circle") kept out of training: every latent whose caption
    # holds one (as whole words) is dropped, so the model has never seen those combinations
    # and an evaluation can ask for them; saved with the model
    held_out: list[str] = field(default_factory=list)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        require(self.condition in ("text", "label"), "condition", self.condition, "text|label")
        require(
            self.condition == "text" or not self.word2vec_init,
            "word2vec_init",
            self.word2vec_init,
            "false with condition: label (there is no text encoder to initialise)",
        )
        for phrase in self.held_out:
            ok = isinstance(phrase, str) and bool(phrase.strip())
            require(ok, "held_out", phrase, "a list of non-empty caption phrases")
        require(
            self.condition == "text" or not self.held_out,
            "held_out",
            self.held_out,
            "[] with condition: label (held-out phrases are caption text)",
        )
        require(
            not (self.schedule.zero_terminal_snr and self.loss.prediction == "eps"),
            "loss.prediction",
            self.loss.prediction,
            "v or x0 with schedule.zero_terminal_snr (at pure noise, ε says nothing of x0)",
        )
        require(
            self.preview.sampler.steps <= self.schedule.timesteps,
            "preview.sampler.steps",
            self.preview.sampler.steps,
            f"an int <= schedule.timesteps = {self.schedule.timesteps}",
        )

    def unet_config(self, latent_channels: int, num_classes: int | None) -> UNetConfig:
        """The UNet for latents of `latent_channels`, conditioned as `condition` says."""
        if self.condition == "text":
            return replace(
                self.unet, in_channels=latent_channels, context_dim=self.text.dim, num_classes=None
            )
        require(
            num_classes is not None and num_classes >= 1,
            "condition",
            self.condition,
            "text for a data set without class labels",
        )
        return replace(
            self.unet, in_channels=latent_channels, context_dim=None, num_classes=num_classes
        )


@dataclass
class SampleConfig:
    """The `sample` stage: a PNG grid per prompt and guidance scale, for seeds 0..n-1."""

    prompts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    per_prompt: int = 8
    guidance: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0])
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig("dpmpp_2m", 20))
    seed: int = 0
    batch_size: int = runtime_field(64)
    device: Device = runtime_field("auto")

    def __post_init__(self) -> None:
        require(self.per_prompt >= 1, "per_prompt", self.per_prompt, "an int >= 1")
        for g in self.guidance:
            require(is_number(g) and g >= 0, "guidance", g, "floats >= 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
