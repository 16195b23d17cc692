"""A small residual CNN for DETR: images [B, 3, H, W] -> features [B, C, H/s, W/s].

    stem      3x3 conv, stride 2, to channels[0]
    stage i   (i > 0: a 3x3 stride-2 conv to channels[i]) then `blocks` ResBlocks
              (GroupNorm, SiLU; `components.nn.ResBlock`)

The stride s is 2^len(channels): (32, 64, 128) gives 8, so a 64-pixel image is 8x8 = 64 tokens
for the encoder. Written here rather than a torchvision ResNet: none of its pretrained weights
can be had offline, and a small net trained from scratch fits the CPU budget.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from components.detection.config import BackboneConfig
from components.nn.resblock import ResBlock, ResBlockConfig


class Backbone(nn.Module):
    def __init__(self, config: BackboneConfig, in_channels: int = 3):
        super().__init__()
        self.config = config
        widths = config.channels
        self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1)
        stages = []
        for i, width in enumerate(widths):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.Conv2d(widths[i - 1], width, 3, stride=2, padding=1))
            block = ResBlockConfig(width, groups=config.norm_groups)
            layers += [ResBlock(block) for _ in range(config.blocks)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths[-1]

    def forward(self, images: Tensor) -> Tensor:
        x = F.silu(self.stem(images))
        for stage in self.stages:
            x = stage(x)
        return x

    def feature_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the images -> (h, w) of the features: each of the len(channels) stride-2
        convs (3x3, padding 1) takes n to ceil(n / 2)."""
        h, w = size
        for _ in self.config.channels:
            h, w = -(-h // 2), -(-w // 2)
        return h, w

    def feature_mask(self, mask: Tensor, size: tuple[int, int]) -> Tensor:
        """Pixel padding mask bool [B, H, W] (True = padding) -> the features' [B, h, w]: a
        feature cell is padding when the pixel at its top-left corner is (as DETR does by
        interpolation)."""
        return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].bool()
