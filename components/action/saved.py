"""The trained online action detector as an object: network + classes + save format.

    detector = ActionDetector.load("data/action/models/oadtr")
    probs = detector.probabilities(features)       # [N, D] -> [N, K], frame t from frames <= t
    online = detector.online(); online.step(f)     # one frame at a time

On disk (`components.artifact`, format "loom-action-detector" version 2: the networks' first
layer is the features' standardisation; a version 1 detector is refused by name): config.json
{"model": "recurrent" | "oadtr", "network": its config, "input_dim", "classes"} and
model.safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from components import artifact
from components.action.config import OadTRConfig, RecurrentConfig
from components.action.models import DETECTORS, RecurrentDetector
from components.action.models import network as build_network
from components.action.streaming import OnlineDetector, offline
from components.config import build, identity
from components.stage import StageInputError

KIND, VERSION = "action-detector", 2


class ActionDetector:
    def __init__(self, network: nn.Module, classes: Sequence[str]):
        if not isinstance(network, DETECTORS):
            raise TypeError(f"{type(network).__name__}: not an action detector network")
        if len(classes) != network.num_classes:
            raise ValueError(f"{len(classes)} class names for {network.num_classes} classes")
        self.network, self.classes = network.eval(), list(classes)

    @property
    def kind(self) -> str:
        return "recurrent" if isinstance(self.network, RecurrentDetector) else "oadtr"

    @property
    def input_dim(self) -> int:
        return self.network.input_dim

    def check(self, features: Tensor, where: str) -> None:
        if features.ndim != 2 or features.shape[1] != self.input_dim:
            raise StageInputError(
                f"{where}: features {list(features.shape)}, but the detector takes "
                f"[N, {self.input_dim}]"
            )

    def probabilities(self, features: Tensor, batch: int = 256) -> Tensor:
        """features [N, D] of one stream -> class probabilities [N, K], online semantics."""
        return offline(self.network, features, batch)

    def online(self) -> OnlineDetector:
        return OnlineDetector(self.network)

    def save(self, directory: str | Path) -> Path:
        fields = {
            "model": self.kind,
            "network": identity(self.network.config),
            "input_dim": self.input_dim,
            "classes": self.classes,
        }
        return artifact.save(directory, KIND, VERSION, fields, artifact.module_state(self.network))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ActionDetector:
        fields = artifact.read_config(directory, KIND, VERSION)
        where = str(Path(directory) / artifact.CONFIG_FILE)
        try:
            classes = [str(c) for c in fields["classes"]]
            input_dim = int(fields["input_dim"])
            kind = fields["model"]
            section = RecurrentConfig if kind == "recurrent" else OadTRConfig
            config = cast(
                RecurrentConfig | OadTRConfig,
                build(section, fields["network"], f"{where}: network"),
            )
            model = build_network(kind, config, input_dim, len(classes))
        except (KeyError, TypeError, ValueError) as err:
            raise StageInputError(f"{where}: not a valid action detector config: {err}") from None
        artifact.load_module(directory, model)
        return cls(model.to(device), classes)
