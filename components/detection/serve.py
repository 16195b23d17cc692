"""A detector as a served model: `load(dir).predict(images)` -> detections per image.

Images as a model server receives them: uint8 RGB [H, W, 3] each (nested lists too). Each
image's answer is a list of {"label", "category_id" (label + 1, as the COCO files), "score",
"bbox" [x, y, w, h] in pixels}, best first. Nothing here knows MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.detection.saved import Detector


class DetectorModel:
    def __init__(self, detector: Detector, threshold: float = 0.0):
        self.detector, self.threshold = detector, threshold

    def predict(self, images: Any) -> list[list[dict[str, Any]]]:
        arrays = [np.asarray(image, dtype=np.uint8) for image in images]
        answers = []
        for found in self.detector.detect(arrays):
            rows = []
            for score, label, box in zip(
                found.scores.tolist(), found.labels.tolist(), found.boxes.tolist(), strict=True
            ):
                if score < self.threshold:
                    continue
                x0, y0, x1, y1 = box
                rows.append({"label": self.detector.classes[label], "category_id": label + 1,
                             "score": score, "bbox": [x0, y0, x1 - x0, y1 - y0]})  # fmt: skip
            answers.append(rows)
        return answers


def load(directory: str | Path) -> DetectorModel:
    return DetectorModel(Detector.load(directory))
