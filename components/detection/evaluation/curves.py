"""Precision-recall curves and per-class AP from a finished `COCOeval` (its accumulated
`eval["precision"]`, [T=10 IoUs, R=101 recalls, K classes, A=4 areas, M=3 max dets]).

COCO's AP is the mean of exactly these curves: precision at the 101 recall points 0, 0.01, ...
1, area "all", 100 detections, averaged over the classes that have ground truth (COCO marks the
others -1) — so the mean of `curve(evaluator, 0.5)` is the reported AP50.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

AREA_ALL, MAX_DETS_100 = 0, 2  # indices into COCOeval's area ranges and maxDets


def _precision(evaluator: Any) -> np.ndarray:
    """[T, R, K] precision at area "all", 100 detections; -1 where a class has no truth."""
    return np.asarray(evaluator.eval["precision"])[:, :, :, AREA_ALL, MAX_DETS_100]


def recall_points(evaluator: Any) -> np.ndarray:
    return np.asarray(evaluator.params.recThrs, dtype=float)  # [R]


def curve(evaluator: Any, iou: float | None) -> np.ndarray:
    """Class-averaged precision [R] at IoU threshold `iou` (one of 0.5, 0.55, ... 0.95), or
    averaged over all ten thresholds when None. Zeros when no class has truth."""
    precision = _precision(evaluator)
    if iou is not None:
        thresholds = np.asarray(evaluator.params.iouThrs)
        index = int(np.argmin(np.abs(thresholds - iou)))
        if abs(thresholds[index] - iou) > 1e-6:
            raise ValueError(f"IoU {iou}: COCOeval scores at {thresholds.round(2).tolist()}")
        precision = precision[index : index + 1]
    valid = precision > -1  # [T', R, K]
    summed = np.where(valid, precision, 0).sum(axis=(0, 2))
    counts = valid.sum(axis=(0, 2))
    return np.divide(summed, counts, out=np.zeros_like(summed, dtype=float), where=counts > 0)


def per_class_ap(evaluator: Any, classes: Sequence[str], iou: float | None = 0.5) -> dict:
    """{class name: AP at `iou` (None: AP@[.5:.95])} for the classes with ground truth."""
    precision = _precision(evaluator)
    if iou is not None:
        index = int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - iou)))
        precision = precision[index : index + 1]
    out = {}
    for k, name in enumerate(classes):
        values = precision[:, :, k]
        if (values > -1).any():
            out[name] = float(values[values > -1].mean())
    return out


def curve_rows(evaluator: Any) -> list[dict[str, float]]:
    """One row per recall point, for DVC plots: recall, precision at IoU .5 and .75, and
    averaged over IoU .5:.95."""
    recall = recall_points(evaluator)
    p50, p75, mean = curve(evaluator, 0.5), curve(evaluator, 0.75), curve(evaluator, None)
    return [
        {"recall": round(float(r), 2), "precision_iou50": float(a), "precision_iou75": float(b),
         "precision_iou50_95": float(c)}
        for r, a, b, c in zip(recall, p50, p75, mean, strict=True)
    ]  # fmt: skip


def plot_curves(evaluator: Any, classes: Sequence[str], path: Path) -> Path:
    """PNG of the precision-recall curves: class-averaged at IoU .5, .75 and .5:.95 (thick),
    each class at IoU .5 (thin)."""
    # Imported here: only this function needs matplotlib (the Agg canvas needs no display).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recall = recall_points(evaluator)
    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    precision = _precision(evaluator)[0]  # IoU 0.5: [R, K]
    for k, name in enumerate(classes):
        if (precision[:, k] > -1).any():
            ax.plot(recall, np.clip(precision[:, k], 0, 1), lw=0.8, alpha=0.6,
                    label=f"{name} (IoU .5)")  # fmt: skip
    for iou, label in ((0.5, "mean, IoU .5"), (0.75, "mean, IoU .75"), (None, "mean, IoU .5:.95")):
        values = curve(evaluator, iou)
        ax.plot(recall, values, lw=2.5, label=f"{label}: AP {values.mean():.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall (area all, 100 detections)")
    ax.legend(fontsize=7, loc="upper right")
    fig.savefig(path, format="png", dpi=100)
    return path
