"""The feature_net stage's section."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import require
from components.train.config import TrainConfig


@dataclass
class FeatureNetworkConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # per level, each /2
    feature_dim: int = 128  # the pooled feature Fréchet distances are measured on
    groups: int = 8  # GroupNorm groups (divides every channel count)
    # how the trunk's last map becomes the feature, concatenated: "mean" and "max" over
    # positions (what is there, wherever it is) and/or "flatten" (where: a position per
    # weight, which learns the shapes' 7 kinds far slower: val shape accuracy 0.63 vs 0.95
    # after 1,200 steps)
    readout: list[str] = field(default_factory=lambda: ["mean", "max"])

    def __post_init__(self) -> None:
        ok = bool(self.channels) and all(isinstance(c, int) and c >= 1 for c in self.channels)
        require(ok, "channels", self.channels, "a non-empty list of ints >= 1")
        ok = all(c % self.groups == 0 for c in self.channels)
        require(ok, "groups", self.groups, f"a divisor of every channel count {self.channels}")
        require(self.feature_dim >= 1, "feature_dim", self.feature_dim, "an int >= 1")
        ok = bool(self.readout) and set(self.readout) <= {"flatten", "mean", "max"}
        require(ok, "readout", self.readout, "a non-empty list of flatten|mean|max")


@dataclass
class FeatureNetConfig:
    """network:  the classifier
    shift:    training augmentation: each image moved by up to `shift` pixels in x and y
              (black fill), so the features do not hinge on exact placement
    train:    the engine's optimisation settings
    """

    network: FeatureNetworkConfig = field(default_factory=FeatureNetworkConfig)
    shift: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        require(0 <= self.shift <= 8, "shift", self.shift, "an int in [0, 8]")
