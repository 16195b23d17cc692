"""Per-frame features from the vision pipeline's trained autoencoder encoder, as OadTR reads
pretrained frame features (two-stream: appearance and motion).

    appearance  the posterior mean's scaled latents [c, h, w], average-pooled to
                [c, pool, pool] and flattened (c · pool² values)
    motion      (`motion: true`) the difference of a frame's appearance and the previous
                frame's (zero at the first frame): what optical flow adds in two-stream
                features, in the latent space

    features = frame_features(autoencoder, frames, pool=4, motion=True)   # [T, 2 · c · 16]

A frame's features depend on it and the frame before only, so online use (one frame at a
time) gets exactly what the batch computation gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import to_float


def feature_dim(autoencoder: Autoencoder, pool: int, motion: bool) -> int:
    c = autoencoder.latent_shape[0]
    return c * pool * pool * (2 if motion else 1)


@torch.no_grad()
def appearance(autoencoder: Autoencoder, frames: Tensor, pool: int, batch: int = 256) -> Tensor:
    """uint8 frames [T, H, W, 3] -> float32 [T, c · pool²]."""
    out = []
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch].to(autoencoder.device)
        latents = autoencoder.encode(to_float(chunk.permute(0, 3, 1, 2)))
        out.append(F.adaptive_avg_pool2d(latents, pool).flatten(1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, feature_dim(autoencoder, pool, False))


def with_motion(features: Tensor) -> Tensor:
    """[T, D] -> [T, 2D]: each row and its difference from the row before (0 for row 0)."""
    previous = torch.cat([features[:1], features[:-1]])
    return torch.cat([features, features - previous], dim=1)


def frame_features(
    autoencoder: Autoencoder, frames: Tensor, pool: int, motion: bool, batch: int = 256
) -> Tensor:
    """uint8 frames [T, H, W, 3] -> float32 [T, feature_dim]."""
    if frames.ndim != 4 or frames.shape[-1] != autoencoder.image_channels:
        raise ValueError(
            f"frames of shape {list(frames.shape)}: expected [T, H, W, "
            f"{autoencoder.image_channels}] (the autoencoder's channels)"
        )
    base = appearance(autoencoder, frames, pool, batch)
    return with_motion(base) if motion else base
