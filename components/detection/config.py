"""The detector's config: backbone, transformer, queries, loss and matcher, one params section.

backbone:  a small residual CNN written here (`backbone.py`); stride 2^len(channels)
transformer: encoder/decoder widths of `components/nn` (softmax | linear attention)
anchors:   false: DETR's learned query embeddings, boxes predicted outright;
           true: DAB-DETR's anchor boxes as queries (their sine embedding is the query
           position), each decoder layer refining the previous layer's boxes
denoising: DN-DETR's noised ground-truth queries (needs anchors: true); see denoising.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.config import require, runtime_field
from components.detection.denoising import DenoisingConfig
from components.nn.attention import AttentionKind
from components.train.config import TrainConfig

ClassLoss = Literal["softmax", "focal"]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class BackboneConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # stage widths; stem + each later stage halve
    blocks: int = 1  # ResBlocks per stage
    norm_groups: int = 8

    def __post_init__(self) -> None:
        ok = isinstance(self.channels, (list, tuple)) and len(self.channels) >= 1
        require(ok and all(map(_positive_int, self.channels)), "channels", self.channels,
                "a list of ints >= 1")  # fmt: skip
        self.channels = tuple(self.channels)
        require(_positive_int(self.blocks), "blocks", self.blocks, "an int >= 1")
        for width in self.channels:
            require(width % self.norm_groups == 0, "norm_groups", self.norm_groups,
                    f"a divisor of every stage width {list(self.channels)}")  # fmt: skip

    @property
    def stride(self) -> int:
        return 2 ** len(self.channels)


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    eos_coef: float = 0.1  # weight of "no object" in the softmax cross-entropy
    class_loss: ClassLoss = "softmax"  # or sigmoid focal loss (with the matching focal cost)
    aux_loss: bool = True  # the loss on every decoder layer's predictions

    def __post_init__(self) -> None:
        for key in ("ce_weight", "bbox_weight", "giou_weight", "eos_coef"):
            value = getattr(self, key)
            require(isinstance(value, (int, float)) and value >= 0, key, value, "a float >= 0")
        require(self.class_loss in ("softmax", "focal"), "class_loss", self.class_loss,
                "one of softmax|focal")  # fmt: skip


@dataclass
class DetrConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dim: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 3
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention: AttentionKind = "softmax"
    num_queries: int = 20
    anchors: bool = False  # DAB-DETR anchor queries refined layer by layer
    # RoI features (needs anchors): each decoder layer adds to its queries the encoder
    # features sampled on a roi_points × roi_points grid inside their anchor boxes (the
    # box-local sampling of Sparse R-CNN / Deformable DETR); 0 = off
    roi_points: int = 0
    denoising: DenoisingConfig = field(default_factory=lambda: DenoisingConfig(enabled=False))
    loss: LossConfig = field(default_factory=LossConfig)
    gradient_checkpointing: bool = runtime_field(False)

    def __post_init__(self) -> None:
        for key in ("dim", "heads", "encoder_layers", "decoder_layers", "num_queries"):
            value = getattr(self, key)
            require(_positive_int(value), key, value, "an int >= 1")
        require(self.dim % 4 == 0 and self.dim % self.heads == 0, "dim", self.dim,
                f"a multiple of 4 and of heads = {self.heads}")  # fmt: skip
        require(self.attention in ("softmax", "linear"), "attention", self.attention,
                "one of softmax|linear")  # fmt: skip
        require(isinstance(self.roi_points, int) and 0 <= self.roi_points <= 8, "roi_points",
                self.roi_points, "an int in 0..8 (0: off)")  # fmt: skip
        if self.roi_points:
            require(self.anchors, "roi_points", self.roi_points,
                    "0, or anchors: true (the points lie inside the anchor boxes)")  # fmt: skip
        if self.denoising.enabled:
            require(
                self.anchors,
                "denoising.enabled",
                True,
                "false, or anchors: true (denoising queries are noised anchor boxes)",
            )
            require(self.attention == "softmax", "denoising.enabled", True,
                    "false with attention: linear (its decoder mask needs softmax)")  # fmt: skip


@dataclass
class AugmentConfig:
    """Training-time augmentations that keep boxes right (`data/augment.py`)."""

    flip: float = 0.5  # probability of a horizontal flip
    scale: tuple[float, float] | None = None  # scale jitter range, e.g. [0.8, 1.2]; null: off
    crop: float = 0.0  # probability of a random crop (boxes clipped, mostly-outside dropped)


@dataclass
class DetectorConfig:
    """The `detector` stage's section: model, augmentations, training."""

    model: DetrConfig = field(default_factory=DetrConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backbone_lr_scale: float = 0.1  # the backbone's LR = schedule x this (DETR's 1e-5 / 1e-4)
    top_k: int = 100  # detections kept per image (no NMS)
    eval_images: int = 128  # val images scored by COCOeval at every validation (live AP)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=1e-4, weight_decay=1e-4, clip_grad_norm=0.1)
    )

    def __post_init__(self) -> None:
        scale = self.backbone_lr_scale
        require(isinstance(scale, (int, float)) and scale > 0, "backbone_lr_scale", scale,
                "a float > 0")  # fmt: skip
        require(_positive_int(self.top_k), "top_k", self.top_k, "an int >= 1")
        require(_positive_int(self.eval_images), "eval_images", self.eval_images, "an int >= 1")
