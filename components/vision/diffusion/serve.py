"""A diffusion model as a served model: `load(dir).predict(prompts)` -> images.

`STAGE.models` names `load` as the loader of the "model" output, so the runner logs that
directory as an MLflow model; `mlflow.pyfunc.load_model("models:/vision.diffusion.shapes/
latest").predict(["a red circle"])` answers with this object's `predict`. Nothing here knows
MLflow.

Prompts go in as a model server receives them: a list of strings (text condition) or of class
indices (label condition), one image each, every one from the noise of seed 0: the same prompt
always answers the same image, whatever else the request holds; images come out uint8
[N, H, W, C].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.vision.diffusion.samplers import SamplerConfig
from components.vision.diffusion.saved import DiffusionModel

BATCH = 64  # prompts per sampling loop
SERVE_SAMPLER = SamplerConfig("dpmpp_2m", 20)
SERVE_GUIDANCE = 3.0


class DiffusionServed:
    def __init__(self, model: DiffusionModel):
        self.model = model

    def predict(self, prompts: Any) -> np.ndarray:
        """prompts: list of N strings (or ints for a label model) -> uint8 [N, H, W, C]."""
        items = list(np.asarray(prompts, dtype=object).ravel())
        if not items:
            raise ValueError("no prompts: expected a list of N >= 1 prompts")
        if self.model.condition == "label":
            items = [int(item) for item in items]
        parts = []
        for start in range(0, len(items), BATCH):
            images = self.model.generate(
                items[start : start + BATCH],
                guidance=SERVE_GUIDANCE,
                sampler=SERVE_SAMPLER,
                seed=0,
            )
            parts.append(images)
        return torch.cat(parts).permute(0, 2, 3, 1).numpy()


def load(directory: str | Path) -> DiffusionServed:
    return DiffusionServed(DiffusionModel.load(directory))
