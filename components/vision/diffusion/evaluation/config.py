"""The evaluate_diffusion stage's section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.config import require, runtime_field
from components.train.config import Device, is_number
from components.vision.data.shapes import SIZES
from components.vision.diffusion.samplers import SamplerConfig

Size = Literal["small", "medium", "large"]


@dataclass
class DetectorJudgeConfig:
    """Scoring by the `detector` input, when given: compositional accuracy on the held-out
    bindings (a shapes model trained with held_out), else the detected class (digits).

    per_prompt:  samples of each held-out prompt per guidance scale
    size:        the size word of the held-out prompts ("a medium yellow circle left of ...")
    threshold:   DETR score a detection needs to count
    scale:       generated images are enlarged this much for the detector, so that objects
                 have the sizes it was trained on (shapes-det: shape_scale 0.7 on 64 px, the
                 images here scale 1 on 32 px: 64 × 0.7 / 32 = 1.4)
    """

    per_prompt: int = 2
    size: Size = "medium"
    threshold: float = 0.5
    scale: float = 1.4

    def __post_init__(self) -> None:
        require(self.per_prompt >= 1, "per_prompt", self.per_prompt, "an int >= 1")
        require(self.size in SIZES, "size", self.size, f"one of {'|'.join(SIZES)}")
        t = self.threshold
        require(is_number(t) and 0 <= t <= 1, "threshold", t, "a float in [0, 1]")
        require(is_number(self.scale) and 0.25 <= self.scale <= 8, "scale", self.scale, "0.25..8")


@dataclass
class EvaluateDiffusionConfig:
    """prompts:    how many val captions (those without a held-out phrase, in order, at most
                half of them) to draw one sample each from, per guidance scale: the FD's
                generated set, scored against as many other val images; the floor is the
                prompts' own images against those
    guidance:   the scales to score
    sampler:    how samples are drawn
    seed:       seeds the starting noise, each sample its own, the same at every scale
    detector:   how the detector input judges samples (`DetectorJudgeConfig`)
    """

    prompts: int = 300
    guidance: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0])
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig("dpmpp_2m", 20))
    seed: int = 0
    detector: DetectorJudgeConfig = field(default_factory=DetectorJudgeConfig)
    grid_images: int = 32  # samples shown per guidance scale in the report's grid
    batch_size: int = runtime_field(100)  # prompts per sampling loop
    device: Device = runtime_field("auto")

    def __post_init__(self) -> None:
        require(self.prompts >= 2, "prompts", self.prompts, "an int >= 2 (a covariance needs 2)")
        require(bool(self.guidance), "guidance", self.guidance, "a non-empty list of floats >= 0")
        for g in self.guidance:
            require(is_number(g) and g >= 0, "guidance", g, "floats >= 0")
        require(self.grid_images >= 1, "grid_images", self.grid_images, "an int >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
