"""The `evaluate_detector` stage's section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.config import require

Split = Literal["train", "val"]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class EvaluateDetectorConfig:
    """split:       which stored split to score ("val": images the detector never saw)
    top_k:       detections kept per image (COCO's AR@100 needs 100; no NMS)
    threshold:   score a drawn prediction needs (the grid and per-image counts, not the AP)
    grid_images: how many images the drawn grid shows (the split's first ones)
    scale:       each grid image is enlarged this many times (nearest) before boxes are drawn,
                 so that labels on 64-px images are readable
    """

    split: Split = "val"
    top_k: int = 100
    threshold: float = 0.5
    grid_images: int = 16
    scale: int = 4

    def __post_init__(self) -> None:
        require(self.split in ("train", "val"), "split", self.split, '"train" or "val"')
        require(_positive_int(self.top_k), "top_k", self.top_k, "an int >= 1")
        threshold = self.threshold
        require(isinstance(threshold, (int, float)) and 0 <= threshold <= 1, "threshold",
                threshold, "a float in [0, 1]")  # fmt: skip
        require(_positive_int(self.grid_images), "grid_images", self.grid_images, "an int >= 1")
        require(_positive_int(self.scale) and self.scale <= 16, "scale", self.scale,
                "an int in [1, 16]")  # fmt: skip
