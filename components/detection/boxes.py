"""Box formats and overlaps.

Formats (the last dimension of every box tensor holds the 4 numbers):
  cxcywh  (centre x, centre y, width, height): what DETR predicts, normalised to [0, 1]
  xyxy    (x min, y min, x max, y max): what overlaps are computed on
  xywh    (x min, y min, width, height): COCO's annotation format

Every function takes any leading batch dimensions. Pairwise functions compare every box of
`boxes1 [..., N, 4]` with every box of `boxes2 [..., M, 4]` and return `[..., N, M]`.

Degenerate boxes: an inverted box (x max < x min or y max < y min) counts as empty (area 0),
and a ratio whose denominator is 0 (two empty boxes: no union, no enclosing area) is taken
as 0 instead of NaN, by clamping the denominator at the dtype's eps. So an empty box has IoU
0 with everything, GIoU 0 with an identical empty box, and the values stay finite with
finite gradients. Only unions or enclosing areas below eps (~1e-7 in float32, far below a
pixel even in normalised coordinates) are affected.
"""

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x0, y0, x1, y1) -> [..., 4] (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] COCO (x0, y0, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    x0, y0, w, h = boxes.unbind(-1)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x0, y0, x1, y1) -> [..., 4] COCO (x0, y0, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] areas; inverted boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def _safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    # 0 / 0 (no union, no enclosing box) is 0 rather than NaN; see the module docstring.
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).eps)


def _aligned_iou_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of boxes1[i] with boxes2[i], broadcasting: [..., 4] x [..., 4] -> [...]."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return _safe_ratio(inter, union), union


def _aligned_generalized_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of boxes1[i] with boxes2[i], broadcasting: [..., 4] x [..., 4] -> [...]."""
    iou, union = _aligned_iou_union(boxes1, boxes2)
    top_left = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enclosing = box_area(torch.cat([top_left, bottom_right], dim=-1))
    return iou - _safe_ratio(enclosing - union, enclosing)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union areas of xyxy boxes.

    boxes1 [..., N, 4], boxes2 [..., M, 4] -> (iou [..., N, M], union [..., N, M]).
    """
    return _aligned_iou_union(boxes1[..., :, None, :], boxes2[..., None, :, :])


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU of xyxy boxes (Rezatofighi et al. 2019, giou.stanford.edu).

    GIoU = IoU - (C - union) / C, with C the area of the smallest box enclosing both; it lies
    in [-1, 1], is 1 for identical boxes and negative for disjoint ones, falling towards -1
    as they move apart. boxes1 [..., N, 4], boxes2 [..., M, 4] -> [..., N, M].
    """
    return _aligned_generalized_iou(boxes1[..., :, None, :], boxes2[..., None, :, :])


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of boxes1[i] with boxes2[i] (the diagonal of `generalized_box_iou`,
    without building the [N, N] matrix). boxes1, boxes2 [..., 4] xyxy -> [...].
    """
    return _aligned_generalized_iou(boxes1, boxes2)
