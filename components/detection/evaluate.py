"""COCO evaluation by pycocotools' `COCOeval`: AP, AP50, AP75, AP small/medium/large, AR@1/10/100.

Ground truth and detections are built in memory as COCO dicts (boxes xywh in pixels; category
id = label + 1, as the data sets' instances JSON numbers them), so the figures are exactly
those a COCO user computes from the files: `results_json` is what `COCO.loadRes` reads.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from components.detection.data.dataset import DetectionRecord
from components.detection.postprocess import Detections

METRICS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100")


def ground_truth(records: Sequence[DetectionRecord], classes: Sequence[str]) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in records:
        h, w = record.image.shape[:2]
        images.append({"id": int(record.image_id), "width": int(w), "height": int(h)})
        for box, label in zip(record.boxes.tolist(), record.labels.tolist(), strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(record.image_id),
                "category_id": int(label) + 1, "bbox": [float(v) for v in box],
                "area": float(box[2] * box[3]), "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def results_json(image_ids: Sequence[int], detections: Sequence[Detections]) -> list[dict]:
    """COCO results format: [{"image_id", "category_id", "bbox" xywh, "score"}]."""
    out = []
    for image_id, found in zip(image_ids, detections, strict=True):
        for score, label, box in zip(
            found.scores.tolist(), found.labels.tolist(), found.boxes.tolist(), strict=True
        ):
            x0, y0, x1, y1 = box
            out.append({"image_id": int(image_id), "category_id": int(label) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})  # fmt: skip
    return out


def coco_metrics(truth: dict[str, Any], results: list[dict]) -> tuple[dict[str, float], Any]:
    """-> ({"ap", "ap50", ...}: COCOeval's stats; -1 where undefined), the COCOeval (its
    `eval["precision"]` [T, R, K, A, M] for precision-recall curves)."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        if not results:
            dt.dataset = {"images": truth["images"], "annotations": [],
                          "categories": truth["categories"]}  # fmt: skip
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=float)
    return dict(zip(METRICS, map(float, stats[:9]), strict=True)), evaluator
