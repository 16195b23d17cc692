"""The precision-recall curves are COCO's own numbers: their means are COCOeval's AP figures."""

import numpy as np
import pytest
import torch

from components.detection.data.dataset import DetectionRecord
from components.detection.evaluate import coco_metrics, ground_truth, results_json
from components.detection.evaluation.curves import curve, curve_rows, per_class_ap
from components.detection.postprocess import Detections

CLASSES = ("circle", "square", "triangle")


def _scene(seed: int, images: int = 12):
    """Records with 1-4 boxes each and detections: the true boxes jittered, scored at random,
    some relabelled, plus false positives."""
    rng = np.random.default_rng(seed)
    records, found = [], []
    for i in range(images):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 40, (n, 2))
        wh = rng.uniform(6, 20, (n, 2))
        boxes = np.concatenate([xy, wh], 1).astype(np.float32)
        labels = rng.integers(0, len(CLASSES), n)
        records.append(DetectionRecord(i, np.zeros((64, 64, 3), np.uint8), boxes, labels))
        jitter = rng.normal(0, 2.0, (n, 4))
        xyxy = np.concatenate([xy, xy + wh], 1) + jitter
        wrong = rng.random(n) < 0.2
        predicted = np.where(wrong, (labels + 1) % len(CLASSES), labels)
        extra = rng.uniform(0, 50, (2, 2))
        xyxy = np.concatenate([xyxy, np.concatenate([extra, extra + 10], 1)])
        predicted = np.concatenate([predicted, rng.integers(0, len(CLASSES), 2)])
        scores = rng.random(len(xyxy))
        order = np.argsort(-scores)
        found.append(Detections(torch.tensor(scores[order]), torch.tensor(predicted[order]),
                                torch.tensor(xyxy[order])))  # fmt: skip
    return records, found


@pytest.mark.parametrize("seed", [0, 1])
def test_curve_means_are_cocoeval_ap(seed):
    records, found = _scene(seed)
    results = results_json([r.image_id for r in records], found)
    metrics, evaluator = coco_metrics(ground_truth(records, CLASSES), results)
    assert 0.2 < metrics["ap50"] < 0.95  # a scene with real misses, not a trivial one
    assert curve(evaluator, 0.5).mean() == pytest.approx(metrics["ap50"], abs=1e-9)
    assert curve(evaluator, 0.75).mean() == pytest.approx(metrics["ap75"], abs=1e-9)
    assert curve(evaluator, None).mean() == pytest.approx(metrics["ap"], abs=1e-9)
    per_class = per_class_ap(evaluator, CLASSES)
    assert set(per_class) <= set(CLASSES)
    assert np.mean(list(per_class.values())) == pytest.approx(metrics["ap50"], abs=1e-9)
    rows = curve_rows(evaluator)
    assert len(rows) == 101 and rows[0]["recall"] == 0 and rows[-1]["recall"] == 1
    precision = [r["precision_iou50"] for r in rows]
    assert precision == sorted(precision, reverse=True)  # COCO's interpolation never rises


def test_perfect_detections_give_a_flat_curve_at_one():
    records, _ = _scene(0)
    xyxy = [np.concatenate([r.boxes[:, :2], r.boxes[:, :2] + r.boxes[:, 2:]], 1) for r in records]
    perfect = [
        Detections(torch.ones(len(r.labels)), torch.tensor(r.labels), torch.tensor(boxes))
        for r, boxes in zip(records, xyxy, strict=True)
    ]
    metrics, evaluator = coco_metrics(
        ground_truth(records, CLASSES), results_json([r.image_id for r in records], perfect)
    )
    assert metrics["ap"] == pytest.approx(1.0)
    assert np.allclose(curve(evaluator, 0.5), 1.0)


def test_an_iou_cocoeval_does_not_score_is_refused():
    records, found = _scene(0)
    _, evaluator = coco_metrics(
        ground_truth(records, CLASSES), results_json([r.image_id for r in records], found)
    )
    with pytest.raises(ValueError, match="IoU 0.62"):
        curve(evaluator, 0.62)
