"""The detection pipeline through the real spine: `dvc repro` of detection_data -> detector at
tiny sizes, tracked in MLflow with live COCO AP, the detector registered and served."""

from __future__ import annotations

import json
import os

import mlflow
import mlflow.pyfunc
import pytest
import yaml
from PIL import Image

from components.detection.data.dataset import read_split
from flows import tracking
from tests.conftest import loom, reproduced_pipeline

TINY_DETECTOR = {
    "model": {"backbone": {"channels": [8, 16, 32], "norm_groups": 4}, "dim": 32,
              "heads": 2, "encoder_layers": 1, "decoder_layers": 2, "num_queries": 6},
    "eval_images": 8,
    "train": {"steps": 6, "batch_size": 8, "val_every": 3, "checkpoint_every": 3,
              "log_every": 1, "warmup_steps": 0},
}  # fmt: skip
TINY_DETECTION = {
    "detection_data": {"shapes": {"count": 60, "size": 48},
                       "digits": {"count": 60, "size": 48, "digit_max_side": 24}},
    "detector": {"shapes": TINY_DETECTOR, "digits": TINY_DETECTOR},
    "runtime": {"detector": {"train": {"progress": False}}},
}  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return reproduced_pipeline(tmp_path_factory, "detection", TINY_DETECTION)


def test_detector_runs_with_live_ap_and_is_served(built):
    root, runs = built
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {f"{stage}@{key}" for stage in ("detection_data", "detector", "evaluate_detector")
            for key in ("shapes", "digits")} <= set(lock)  # fmt: skip
    metrics = yaml.safe_load((root / "metrics/detector_shapes.json").read_text())
    assert {"ap", "ap50", "ar100"} <= set(metrics["detector"])
    client = mlflow.MlflowClient()
    run = runs["detector@shapes"]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/ap50")) == [3, 6]
    model = mlflow.pyfunc.load_model("models:/detection.detector.shapes/latest")
    image = read_split(root / "data/detection/shapes", "val")[0].image
    (answer,) = model.predict([image])
    assert len(answer) == 6 and {"label", "score", "bbox", "category_id"} <= set(answer[0])


def test_evaluation_reports_cocoeval_to_dvc_and_mlflow(built):
    root, runs = built
    report = root / "reports/detection/shapes"
    assert {"results.json", "pr_curve.json", "pr_curve.png", "detections.png"} <= {
        p.name for p in report.iterdir()
    }
    metrics = yaml.safe_load((root / "metrics/evaluate_detector_shapes.json").read_text())
    figures = metrics["evaluate_detector"]
    assert {"ap", "ap50", "ap75", "ap_small", "ar1", "ar10", "ar100"} <= set(figures)
    run = runs["evaluate_detector@shapes"]
    assert run.data.metrics["ap50"] == pytest.approx(figures["ap50"])
    # the evaluation is linked to the detector it scored (found by the model's DVC md5)
    assert run.data.tags["loom.evaluated_model"].startswith("models:/detection.detector.shapes/")
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"pr_curve.png", "detections.png", "results.json"} <= artifacts


def test_loom_detect_with_the_run_that_registered_the_detector(built, tmp_path):
    root, runs = built
    drawing = tmp_path / "drawn.png"
    Image.new("RGB", (120, 90), (0, 0, 0)).save(drawing)
    run_id = runs["detector@shapes"].info.run_id
    experiment = mlflow.get_experiment(runs["detector@shapes"].info.experiment_id).name
    env = {**os.environ, tracking.EXPERIMENT_ENV: experiment}  # where a run id prefix is searched
    res = loom(root, "detect", str(drawing), "--run", run_id[:8], "--out", str(tmp_path / "o"),
               "--threshold", "0", env=env)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{drawing}: 6 object(s)" in res.stdout  # num_queries, all above threshold 0
    assert len(json.loads((tmp_path / "o" / "detections.json").read_text())) == 6
    # a run of another stage made no detector: one clear line
    data_run = runs["detection_data@shapes"].info.run_id
    res = loom(root, "detect", str(drawing), "--run", data_run, env=env)
    assert res.returncode == 1
    assert f"run {data_run} (detection_data@shapes) registered no detector" in res.stderr
