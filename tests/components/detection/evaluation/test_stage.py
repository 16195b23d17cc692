"""The evaluate_detector stage on a small shapes-det set and an untrained detector: every
report file, metrics equal to the files, and the errors it refuses with."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from components.config import build
from components.detection.config import DetrConfig
from components.detection.data.config import DetectionDataConfig
from components.detection.data.stage import STAGE as DATA
from components.detection.evaluation.stage import STAGE as EVALUATE
from components.detection.model import Detr
from components.detection.saved import Detector
from components.stage import RecordingLogger, StageInputError, StageIO
from components.vision.data.store import read_meta
from components.vision.grid import decode_png


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "shapes"
    config = build(DetectionDataConfig, {"source": "shapes", "count": 40, "size": 48,
                                         "max_objects": 3, "val_fraction": 0.25})  # fmt: skip
    DATA.run(config, StageIO({}, {"images": out}))
    return out


def _detector(directory, classes):
    config = build(DetrConfig, {"backbone": {"channels": [8, 16], "norm_groups": 4}, "dim": 16,
                                "heads": 2, "encoder_layers": 1, "decoder_layers": 1,
                                "num_queries": 5})  # fmt: skip
    Detector(Detr(config, len(classes)), classes, 48, top_k=5).save(directory)
    return directory


def _evaluate(model, images, out, **overrides):
    config = build(EVALUATE.config, {"grid_images": 4, "threshold": 0.0, **overrides})
    io = StageIO({"model": model, "images": images}, {"report": out}, log=RecordingLogger())
    return EVALUATE.run(config, io), io


def test_report_files_and_metrics(shapes, tmp_path):
    classes = list(read_meta(shapes).classes)
    model = _detector(tmp_path / "model", classes)
    result, io = _evaluate(model, shapes, tmp_path / "report")
    report = tmp_path / "report"
    names = {"results.json", "metrics.json", "pr_curve.json", "pr_curve.png", "detections.png"}
    assert {p.name for p in report.iterdir()} == names
    summary = json.loads((report / "metrics.json").read_text())
    assert summary["coco"]["ap50"] == result.metrics["ap50"]
    assert summary["images"] == result.metrics["images"] == read_meta(shapes).counts["val"]
    assert {f"ap50/{c}" for c in summary["ap50_per_class"]} <= set(result.metrics)
    assert result.metrics["detections_per_image"] == 5  # threshold 0: every top-5 detection

    gt = COCO(str(shapes / "instances_val.json"))
    results = json.loads((report / "results.json").read_text())
    assert len(results) == 5 * result.metrics["images"]
    loaded = gt.loadRes(results)  # the results file is what pycocotools reads
    assert set(loaded.getImgIds()) == set(gt.getImgIds())
    rows = json.loads((report / "pr_curve.json").read_text())
    mean50 = np.mean([r["precision_iou50"] for r in rows])
    assert mean50 == pytest.approx(max(result.metrics["ap50"], 0.0), abs=1e-9)
    grid = decode_png((report / "detections.png").read_bytes())
    assert grid.shape[0] > 48 * 4 and io.log.images[0][0] == "detections"


def test_a_detector_of_other_classes_is_refused(shapes, tmp_path):
    model = _detector(tmp_path / "model", ["cat", "dog"])
    with pytest.raises(StageInputError, match=r"classes \['cat', 'dog'\] are not the data set's"):
        _evaluate(model, shapes, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="threshold"):
        build(EVALUATE.config, {"threshold": 1.5})
    with pytest.raises(ValueError, match="split"):
        build(EVALUATE.config, {"split": "test"})
