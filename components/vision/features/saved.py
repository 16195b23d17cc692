"""The trained feature network as an object: network + heads + save format.

    net = FeatureNet.load("data/features/shapes")
    vectors = net.features(images)     # uint8 [N, H, W, C] -> float [N, feature_dim]
    shown = net.predict(images)        # -> [{head: frozenset of names}] (`heads.Attributes`)

On disk (`components.artifact`, format "loom-feature-net" version 1): config.json {"network",
"heads", "channels", "size"} and model.safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from components import artifact
from components.config import build, identity
from components.stage import StageInputError
from components.vision.features.config import FeatureNetworkConfig
from components.vision.features.heads import Attributes, Head, decode
from components.vision.features.model import FeatureNetwork, to_input

KIND, VERSION = "feature-net", 1
BATCH = 256  # images per forward pass


class FeatureNet:
    def __init__(self, network: FeatureNetwork, size: int):
        self.network = network.eval()
        self.size = size  # the image side it was trained on (and only takes)

    @property
    def heads(self) -> tuple[Head, ...]:
        return self.network.heads

    @property
    def channels(self) -> int:
        return self.network.in_channels

    def check(self, images: np.ndarray | Tensor, where: str = "images") -> None:
        """ValueError unless `images` are uint8 [N, size, size, channels]."""
        shape = tuple(images.shape)
        wanted = (self.size, self.size, self.channels)
        dtype_ok = images.dtype in (np.uint8, torch.uint8)
        if len(shape) != 4 or shape[1:] != wanted or not dtype_ok:
            raise ValueError(
                f"{where}: {images.dtype} {list(shape)}, but the feature network takes uint8 "
                f"[N, {', '.join(map(str, wanted))}]"
            )

    @torch.no_grad()
    def _run(self, images: np.ndarray | Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        self.check(images)
        pixels = torch.as_tensor(np.asarray(images))
        device = next(self.network.parameters()).device
        features, logits = [], []
        for start in range(0, len(pixels), BATCH):
            f, out = self.network(to_input(pixels[start : start + BATCH].to(device)))
            features.append(f.float().cpu())
            logits.append({k: v.float().cpu() for k, v in out.items()})
        joined = {h.name: torch.cat([part[h.name] for part in logits]) for h in self.heads}
        return torch.cat(features), joined

    def features(self, images: np.ndarray | Tensor) -> Tensor:
        """uint8 [N, H, W, C] -> pooled features float [N, feature_dim]."""
        return self._run(images)[0]

    def predict(self, images: np.ndarray | Tensor) -> list[Attributes]:
        """uint8 [N, H, W, C] -> what each image shows, per head."""
        return decode(self.heads, self._run(images)[1])

    def features_and_predict(self, images: np.ndarray | Tensor) -> tuple[Tensor, list[Attributes]]:
        features, logits = self._run(images)
        return features, decode(self.heads, logits)

    def save(self, directory: str | Path) -> Path:
        fields = {
            "network": identity(self.network.config),
            "heads": [h.to_json() for h in self.heads],
            "channels": self.channels,
            "size": self.size,
        }
        return artifact.save(directory, KIND, VERSION, fields, artifact.module_state(self.network))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> FeatureNet:
        fields = artifact.read_config(directory, KIND, VERSION)
        where = str(Path(directory) / artifact.CONFIG_FILE)
        try:
            config = build(FeatureNetworkConfig, fields["network"], f"{where}: network")
            heads: Sequence[Head] = [Head.from_json(h) for h in fields["heads"]]
            size = int(fields["size"])
            network = FeatureNetwork(config, int(fields["channels"]), size, heads)
        except (KeyError, TypeError, ValueError) as err:
            raise StageInputError(f"{where}: not a valid feature network config: {err}") from None
        artifact.load_module(directory, network)
        return cls(network.to(device), size)
