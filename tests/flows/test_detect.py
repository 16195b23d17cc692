"""`loom detect` on files a user drew, with a detector directory (--model): the outputs, the
box scaling back to the file's pixels, and each refusal as one clear line with exit 1."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from components.config import build
from components.detection.config import DetrConfig
from components.detection.model import Detr
from components.detection.saved import Detector
from flows import detect

CLASSES = ["circle", "square"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    config = build(DetrConfig, {"backbone": {"channels": [8, 16], "norm_groups": 4}, "dim": 16,
                                "heads": 2, "encoder_layers": 1, "decoder_layers": 1,
                                "num_queries": 4})  # fmt: skip
    directory = tmp_path_factory.mktemp("detector")
    Detector(Detr(config, len(CLASSES)), CLASSES, image_size=48, top_k=4).save(directory)
    return directory


def _drawing(path, size=(200, 120)):
    image = Image.new("RGB", size, (10, 10, 10))
    pen = ImageDraw.Draw(image)
    pen.ellipse((20, 20, 80, 80), fill=(200, 40, 40))
    pen.rectangle((120, 30, 180, 90), fill=(40, 40, 200))
    image.save(path)
    return path


def _loom(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flows.cli", "detect", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True)  # fmt: skip


def test_writes_coco_results_and_a_drawn_png_per_image(model, tmp_path):
    a, b = _drawing(tmp_path / "a.png"), _drawing(tmp_path / "b.jpg", size=(64, 96))
    out = tmp_path / "out"
    rows = detect.detect([a, b], out, model=model, threshold=0.0)
    assert [len(r) for r in rows] == [4, 4]  # threshold 0: every query's detection
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "detections.json",
                                                      "images.json"]  # fmt: skip
    index = json.loads((out / "images.json").read_text())
    assert [(i["width"], i["height"]) for i in index["images"]] == [(200, 120), (64, 96)]
    gt = COCO()
    gt.dataset = {"images": index["images"], "annotations": [], "categories": index["categories"]}
    gt.createIndex()
    results = json.loads((out / "detections.json").read_text())
    assert len(gt.loadRes(results).anns) == 8
    for row in results:  # boxes in the file's pixels, not the detector's 48 px
        x, y, w, h = row["bbox"]
        width, height = (200, 120) if row["image_id"] == 1 else (64, 96)
        assert -1e-3 <= x and x + w <= width + 1e-3 and y + h <= height + 1e-3
    assert max(r["bbox"][0] + r["bbox"][2] for r in results if r["image_id"] == 1) > 48
    drawn = np.asarray(Image.open(out / "a.png"))
    assert drawn.shape[1] == 200 * 3  # small images drawn larger (longer side ~512)


def test_fitted_detection_equals_detection_on_the_resized_image(model):
    detector = Detector.load(model)
    image = np.random.default_rng(0).integers(0, 255, (96, 48, 3), dtype=np.uint8)
    (fitted,) = detector.detect_fitted([image])
    half = np.array(Image.fromarray(image).resize((24, 48), Image.Resampling.BILINEAR))
    (direct,) = detector.detect([half])
    assert torch.allclose(fitted.boxes, direct.boxes * 2, atol=1e-4)
    assert torch.equal(fitted.labels, direct.labels)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_an_image", "not a readable image"),
        ("missing", "no such image file"),
        ("not_a_detector", "not a detector directory"),
        ("other_classes", "weights do not fit the config"),
        ("threshold", "--threshold 1.5: expected a score in [0, 1]"),
        ("both", "pass --run or --model, not both"),
    ],
)
def test_refusals_name_the_problem_and_write_nothing(model, tmp_path, case, message):
    image = _drawing(tmp_path / "ok.png")
    args = [image, "--model", model, "--out", tmp_path / "out"]
    if case == "not_an_image":
        (tmp_path / "notes.png").write_text("not a PNG")
        args = [image, tmp_path / "notes.png", *args[1:]]
    elif case == "missing":
        args = [tmp_path / "gone.png", *args[1:]]
    elif case == "not_a_detector":
        args[2] = tmp_path
    elif case == "other_classes":
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
        config = json.loads((model / "config.json").read_text())
        config["classes"] = ["circle", "square", "star"]  # three classes, weights for two
        (broken / "config.json").write_text(json.dumps(config))
        args[2] = broken
    elif case == "threshold":
        args += ["--threshold", "1.5"]
    elif case == "both":
        args += ["--run", "abcdef"]
    res = _loom(*args, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("loom detect: error: ") and message in line, line
    assert not (tmp_path / "out").exists()
