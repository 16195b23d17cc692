"""Boxes drawn on images: what `evaluate_detector`'s grid and `loom detect` write.

    drawn = draw_boxes(image, found, classes, truth=boxes, scale=4)   # uint8 [H·s, W·s, 3]

Predictions are outlined in their class's colour and labelled "name score"; true boxes, when
given, in thin white under them, so a missed object shows as a white box alone. Nothing here
reads or writes files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from components.detection.postprocess import Detections

# Distinct, saturated colours (Okabe-Ito, then more), class id modulo their number.
PALETTE = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (255, 64, 64), (160, 255, 96), (170, 110, 255),
)  # fmt: skip
TRUTH = (255, 255, 255)


def draw_boxes(
    image: np.ndarray,
    found: Detections,
    classes: Sequence[str],
    threshold: float = 0.5,
    truth: np.ndarray | None = None,
    scale: int = 1,
) -> np.ndarray:
    """image uint8 [H, W, 3]; `found` in its pixels (xyxy); truth float [n, 4] COCO xywh in
    pixels or None. Returns uint8 [H·scale, W·scale, 3]: the image enlarged (nearest), true
    boxes in white, predictions scoring >= `threshold` in their class colour, labelled."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_boxes: expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    canvas = Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if truth is not None:
        for x, y, bw, bh in np.asarray(truth, dtype=float).reshape(-1, 4).tolist():
            pen.rectangle(_scaled((x, y, x + bw, y + bh), scale), outline=TRUTH, width=1)
    width = max(1, scale // 2)
    for score, label, box in zip(
        found.scores.tolist(), found.labels.tolist(), found.boxes.tolist(), strict=True
    ):
        if score < threshold:
            continue
        colour = PALETTE[label % len(PALETTE)]
        x0, y0, x1, y1 = _scaled(box, scale)
        pen.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        text = f"{classes[label]} {score:.2f}"
        left, top, right, bottom = pen.textbbox((x0, y0), text, font=font)
        # the label sits above the box, or inside its top when the box touches the top edge
        dy = (bottom - top + 2) if y0 >= bottom - top + 2 else 0
        pen.rectangle((left, top - dy, right + 2, bottom - dy), fill=colour)
        pen.text((x0 + 1, y0 - dy), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _scaled(box: Sequence[float], scale: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (v * scale for v in box)
    return x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)
