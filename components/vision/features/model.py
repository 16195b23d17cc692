"""The feature network: a convolutional trunk, a projected feature, one linear layer per head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from components.vision.features.config import FeatureNetworkConfig
from components.vision.features.heads import Head


def _level(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    """Two 3×3 convolutions, the second halving the side."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, stride=2, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class FeatureNetwork(nn.Module):
    def __init__(
        self, config: FeatureNetworkConfig, in_channels: int, size: int, heads: Sequence[Head]
    ):
        """size: the image side. The trunk's last map [B, c, s, s] (s = size / 2^levels) is
        read the ways `config.readout` lists, concatenated and projected: flattened (where
        things are: a digit's strokes, a relation), its mean and its maximum over positions
        (what is there anywhere: an object's shape, wherever it was drawn)."""
        super().__init__()
        self.config, self.in_channels, self.heads = config, in_channels, tuple(heads)
        side = size // 2 ** len(config.channels)
        if side < 1:
            raise ValueError(
                f"{size} px images halve to nothing over {len(config.channels)} levels"
            )
        levels, c = [], in_channels
        for width in config.channels:
            levels.append(_level(c, width, config.groups))
            c = width
        self.trunk = nn.Sequential(*levels)
        widths = {"flatten": c * side * side, "mean": c, "max": c}
        read = sum(widths[way] for way in config.readout)
        self.project = nn.Sequential(nn.Linear(read, config.feature_dim), nn.SiLU())
        self.outputs = nn.ModuleDict(
            {h.name: nn.Linear(config.feature_dim, len(h.names)) for h in heads}
        )

    def features(self, images: Tensor) -> Tensor:
        """images float [N, C, H, W] in [-1, 1] -> pooled features [N, feature_dim]."""
        maps = self.trunk(images)  # [N, c, s, s]
        ways = {
            "flatten": lambda: maps.flatten(1),
            "mean": lambda: maps.mean(dim=(2, 3)),
            "max": lambda: maps.amax(dim=(2, 3)),
        }
        return self.project(torch.cat([ways[way]() for way in self.config.readout], dim=1))

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """images float [N, C, H, W] in [-1, 1] -> (features [N, D], {head: logits [N, K]})."""
        features = self.features(images)
        return features, {name: layer(features) for name, layer in self.outputs.items()}


def to_input(images: Tensor) -> Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def shifted(images: Tensor, shift: int, generator: torch.Generator | None = None) -> Tensor:
    """images [N, C, H, W] in [-1, 1], each moved by its own (dx, dy) in [-shift, shift]²,
    the uncovered border black."""
    if shift == 0:
        return images
    n, _, h, w = images.shape
    padded = nn.functional.pad(images, (shift, shift, shift, shift), value=-1.0)
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    return torch.stack([
        padded[i, :, int(dy) : int(dy) + h, int(dx) : int(dx) + w]
        for i, (dx, dy) in enumerate(offsets)
    ])  # fmt: skip
