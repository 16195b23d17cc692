"""Model outputs -> detections: top-k per image by score, no NMS (a set predictor's queries do
not duplicate each other once trained, so there is nothing to suppress)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from components.detection.boxes import cxcywh_to_xyxy


@dataclass
class Detections:
    scores: Tensor  # [k] in [0, 1], descending
    labels: Tensor  # int64 [k], contiguous class ids
    boxes: Tensor  # [k, 4] xyxy in pixels of the image as given (before padding)


@torch.no_grad()
def postprocess(
    logits: Tensor, boxes: Tensor, sizes: Tensor, top_k: int = 100, focal: bool = False
) -> list[Detections]:
    """logits [B, N, K+1] (softmax: the last class is "no object") or [B, N, K] (focal),
    boxes [B, N, 4] cxcywh in [0, 1], sizes [B, 2] (height, width) in pixels.

    softmax: each query's best real class, its probability the score; the top_k queries.
    focal: the top_k (query, class) pairs by sigmoid score over all N·K of them (a query may
    answer for two classes, as in Deformable DETR)."""
    if focal:
        probs = logits.sigmoid()
        b, n, k = probs.shape
        scores, flat = probs.flatten(1).topk(min(top_k, n * k), dim=1)
        queries, labels = flat // k, flat % k
    else:
        probs = logits.softmax(-1)[..., :-1]
        best, classes = probs.max(-1)  # [B, N]
        scores, queries = best.topk(min(top_k, best.shape[1]), dim=1)
        labels = classes.gather(1, queries)
    picked = boxes.gather(1, queries[..., None].expand(-1, -1, 4))
    h, w = sizes[:, 0].float(), sizes[:, 1].float()
    scale = torch.stack([w, h, w, h], dim=1)[:, None, :]
    xyxy = cxcywh_to_xyxy(picked) * scale
    return [Detections(scores[i], labels[i], xyxy[i]) for i in range(logits.shape[0])]
