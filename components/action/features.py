"""Per-frame features from the vision pipeline's trained autoencoder encoder, as OadTR reads
pretrained frame features (two-stream: appearance and motion).

    appearance  the posterior mean's scaled latents [c, h, w], average-pooled to
                [c, pool, pool] and flattened (c · pool² values)
    motion      (`motion: [2, 4, 8, 16]`) for each lag k, the difference of a frame's
                appearance and that of the frame k before (of frame 0 while t < k): what
                optical flow adds in two-stream features, in the latent space, at several
                time scales. The actions are slow (a move is 0.15-1 px per frame), so a
                one-frame difference is mostly camera noise; over 16 frames it is a shift.

    features = frame_features(autoencoder, frames, pool=4, motion=(2, 4, 8, 16))
    # [T, 5 · c · 16]

A frame's features depend on it and the max(motion) frames before only, so online use (a
ring of the latest appearances) gets exactly what the batch computation gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import to_float


def feature_dim(autoencoder: Autoencoder, pool: int, motion: Sequence[int]) -> int:
    c = autoencoder.latent_shape[0]
    return c * pool * pool * (1 + len(motion))


@torch.no_grad()
def appearance(autoencoder: Autoencoder, frames: Tensor, pool: int, batch: int = 256) -> Tensor:
    """uint8 frames [T, H, W, 3] -> float32 [T, c · pool²]."""
    out = []
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch].to(autoencoder.device)
        latents = autoencoder.encode(to_float(chunk.permute(0, 3, 1, 2)))
        out.append(F.adaptive_avg_pool2d(latents, pool).flatten(1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, feature_dim(autoencoder, pool, ()))


def with_motion(features: Tensor, lags: Sequence[int]) -> Tensor:
    """[T, D] -> [T, (1 + len(lags)) · D]: each row, then for each lag k its difference from
    row t - k (from row 0 while t < k)."""
    parts = [features]
    for k in lags:
        before = features[(torch.arange(len(features)) - k).clamp_min(0)]
        parts.append(features - before)
    return torch.cat(parts, dim=1)


def frame_features(
    autoencoder: Autoencoder,
    frames: Tensor,
    pool: int,
    motion: Sequence[int],
    batch: int = 256,
) -> Tensor:
    """uint8 frames [T, H, W, 3] -> float32 [T, feature_dim]."""
    if frames.ndim != 4 or frames.shape[-1] != autoencoder.image_channels:
        raise ValueError(
            f"frames of shape {list(frames.shape)}: expected [T, H, W, "
            f"{autoencoder.image_channels}] (the autoencoder's channels)"
        )
    base = appearance(autoencoder, frames, pool, batch)
    return with_motion(base, motion)
