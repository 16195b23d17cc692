"""Stage "detection.evaluate": score a trained detector on a stored detection set.

Inputs: "model" (a `Detector` directory, stage "detection.detector") and "images" (the set it
was trained on, stage "detection.data"). Output "report", a new directory of:
  results.json    the detections in COCO results format (what `COCO.loadRes` reads)
  metrics.json    pycocotools' COCOeval: AP, AP50, AP75, AP small/medium/large, AR@1/10/100,
                  and AP50 per class
  pr_curve.json   precision at the 101 recall points (IoU .5, .75, .5:.95), for `dvc plots`
  pr_curve.png    the same curves, and each class's at IoU .5
  detections.png  the first `grid_images` images, true boxes white, predictions coloured
Metrics (DVC and MLflow): the COCOeval figures, "ap50/<class>" and detections per image above
`threshold`. A detector whose classes are not the set's is a `StageInputError` naming both.
"""

from __future__ import annotations

import json

import numpy as np

from components.detection.data.dataset import read_split
from components.detection.evaluate import METRICS, coco_metrics, ground_truth, results_json
from components.detection.evaluation.config import EvaluateDetectorConfig
from components.detection.evaluation.curves import curve_rows, per_class_ap, plot_curves
from components.detection.evaluation.draw import draw_boxes
from components.detection.saved import Detector
from components.stage import Output, Stage, StageInputError, StageIO, StageResult
from components.vision.data.store import read_meta
from components.vision.grid import image_grid, png_bytes


def _run(config: EvaluateDetectorConfig, io: StageIO) -> StageResult:
    source, model_dir = io.inputs["images"], io.inputs["model"]
    meta = read_meta(source)
    records = read_split(source, config.split)
    if not records:
        raise StageInputError(f"{source / (config.split + '.parquet')}: no images to evaluate")
    detector = Detector.load(model_dir)
    if tuple(detector.classes) != tuple(meta.classes):
        raise StageInputError(
            f"{model_dir}: the detector's classes {list(detector.classes)} are not the data "
            f"set's {list(meta.classes)} ({source / 'meta.json'})"
        )
    detector.top_k = config.top_k
    found = detector.detect([r.image for r in records])
    results = results_json([r.image_id for r in records], found)
    scores, evaluator = coco_metrics(ground_truth(records, meta.classes), results)
    per_class = per_class_ap(evaluator, meta.classes, 0.5)
    kept = sum(int((f.scores >= config.threshold).sum()) for f in found)

    out = io.outputs["report"]
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(results), encoding="utf-8")
    summary = {"split": config.split, "images": len(records), "coco": scores,
               "ap50_per_class": per_class}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "pr_curve.json").write_text(json.dumps(curve_rows(evaluator)), encoding="utf-8")
    plot_curves(evaluator, meta.classes, out / "pr_curve.png")
    shown = records[: config.grid_images]
    drawn = np.stack([
        draw_boxes(r.image, f, meta.classes, config.threshold, r.boxes, config.scale)
        for r, f in zip(shown, found, strict=False)
    ])  # fmt: skip
    grid = image_grid(drawn, columns=4)
    (out / "detections.png").write_bytes(png_bytes(grid))
    io.log.log_image("detections", 0, grid)

    metrics = {k: scores[k] for k in METRICS}
    metrics |= {f"ap50/{name}": value for name, value in per_class.items()}
    metrics |= {"images": float(len(records)), "detections_per_image": kept / len(records)}
    files = ("results.json", "metrics.json", "pr_curve.json", "pr_curve.png", "detections.png")
    return StageResult(metrics=metrics, artifacts=[Output("report", name) for name in files])


STAGE = Stage(
    name="detection.evaluate",
    version="1",
    config=EvaluateDetectorConfig,
    inputs=("model", "images"),
    outputs=("report",),
    run=_run,
    key_metrics=("ap", "ap50", "ar100"),
)
