"""Per-frame metrics of online action detection, as THUMOS'14 and TVSeries report them.

average_precision(scores, positives)   step-wise AP over the distinct score thresholds:
    Σ_n (R_n − R_{n−1}) · P_n (scikit-learn's average_precision_score, ties included)
calibrated_average_precision(...)      cAP (De Geest et al. 2016): precision calibrated
    to a 1:1 positive:negative ratio, cPrec = w·TP / (w·TP + FP), w = negatives /
    positives, averaged over the positives as AP is; comparable across classes whose
    frame counts differ
frame_map(probs, labels, classes)      per-class AP over every frame, background excluded,
                                       and their mean; the same for cAP
onset_map(probs, labels, instances)    AP where a class's positives are only the first
    `frames` frames of each of its instances (the rest of its frames are left out,
    every other frame is a negative): how early an action is recognised
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each distinct threshold, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    scores, positives = scores[order], positives[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each tie group
    tp = np.cumsum(positives)[last]
    fp = (last + 1) - tp
    return tp, fp


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of `scores` [N] for the boolean `positives` [N]; NaN without positives."""
    positives = np.asarray(positives, bool)
    total = positives.sum()
    if total == 0:
        return float("nan")
    tp, fp = _curve(np.asarray(scores, np.float64), positives)
    precision, recall = tp / (tp + fp), tp / total
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibrated_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """cAP of `scores` [N] for `positives` [N] (module doc); NaN without positives."""
    positives = np.asarray(positives, bool)
    total = positives.sum()
    if total == 0:
        return float("nan")
    w = (len(positives) - total) / total
    tp, fp = _curve(np.asarray(scores, np.float64), positives)
    precision, recall = w * tp / (w * tp + fp), tp / total
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def frame_map(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], background: int = 0
) -> dict[str, float]:
    """probs [N, K], labels [N] -> {"map", "cmap", "ap/<class>", "cap/<class>"} over the
    classes but background, each class's AP over every frame; a class without frames is
    left out of the means (NaN in its own entry)."""
    out: dict[str, float] = {}
    aps, caps = [], []
    for k, name in enumerate(classes):
        if k == background:
            continue
        ap = average_precision(probs[:, k], labels == k)
        cap = calibrated_average_precision(probs[:, k], labels == k)
        out[f"ap/{name}"], out[f"cap/{name}"] = ap, cap
        if not np.isnan(ap):
            aps.append(ap)
            caps.append(cap)
    out["map"] = float(np.mean(aps)) if aps else float("nan")
    out["cmap"] = float(np.mean(caps)) if caps else float("nan")
    return out


def onset_map(
    probs: np.ndarray,
    labels: np.ndarray,
    instances: Sequence[tuple[int, int, int]],
    classes: Sequence[str],
    frames: int,
    background: int = 0,
) -> float:
    """Mean over classes (background excluded) of the AP whose positives are the first
    `frames` frames of each instance (label, start, end) of the class; its later frames are
    not scored; every frame of another label is a negative."""
    aps = []
    for k in range(len(classes)):
        if k == background:
            continue
        onset = np.zeros(len(labels), bool)
        for label, start, end in instances:
            if label == k:
                onset[start : min(end, start + frames)] = True
        scored = onset | (labels != k)
        if onset.any():
            aps.append(average_precision(probs[scored, k], onset[scored]))
    return float(np.mean(aps)) if aps else float("nan")
