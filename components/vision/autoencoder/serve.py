"""An autoencoder as a served model: `load(dir).predict(images)` -> scaled latents.

`STAGE.models` names `load` as the loader of the "model" output, so the runner logs that
directory as an MLflow model; `mlflow.pyfunc.load_model("models:/vision.autoencoder.kl_digits
/latest").predict(images)` answers with this object's `predict`, and `decode` turns latents
back into images. Nothing here knows MLflow.

Images go in as a model server receives them: uint8 (or ints 0-255) [N, H, W, C] (nested
lists too), of the size and channels the model was trained on; latents come out as the
diffusion pipeline reads them, float32 [N, c, h, w], scaled by the stored scale factor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import to_float, to_uint8

BATCH = 256  # images per forward pass: a large request does not need one huge activation


class AutoencoderModel:
    def __init__(self, autoencoder: Autoencoder):
        self.autoencoder = autoencoder

    def _images(self, images: Any) -> torch.Tensor:
        array = np.asarray(images)
        ae = self.autoencoder
        expected = (ae.image_size, ae.image_size, ae.image_channels)
        if array.ndim == 3 and ae.image_channels == 1:
            array = array[..., None]  # grey images given as [N, H, W]
        if array.ndim != 4 or tuple(array.shape[1:]) != expected or array.shape[0] == 0:
            raise ValueError(
                f"images of shape {array.shape}: expected [N, {', '.join(map(str, expected))}]"
                ", N >= 1"
            )
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
                raise ValueError(f"images of dtype {array.dtype}: expected uint8 pixels 0-255")
            array = array.astype(np.uint8)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)

    def predict(self, images: Any) -> np.ndarray:
        """uint8 images [N, H, W, C] -> scaled latents float32 [N, c, h, w] (posterior mean
        for kl, codes for vq)."""
        pixels = self._images(images)
        device = self.autoencoder.device
        parts = [
            self.autoencoder.encode(to_float(pixels[i : i + BATCH].to(device))).cpu()
            for i in range(0, pixels.shape[0], BATCH)
        ]
        return torch.cat(parts).numpy()

    def decode(self, latents: Any) -> np.ndarray:
        """Scaled latents [N, c, h, w] -> uint8 images [N, H, W, C]."""
        z = torch.as_tensor(np.asarray(latents, dtype=np.float32))
        device = self.autoencoder.device
        parts = [
            to_uint8(self.autoencoder.decode(z[i : i + BATCH].to(device))).cpu()
            for i in range(0, z.shape[0], BATCH)
        ]
        return torch.cat(parts).permute(0, 2, 3, 1).numpy()


def load(directory: str | Path) -> AutoencoderModel:
    return AutoencoderModel(Autoencoder.load(directory))
