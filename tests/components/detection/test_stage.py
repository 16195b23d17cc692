"""The detector stage as the runner runs it, on a small generated shapes-det set."""

import pytest
import torch

from components.config import build
from components.detection.data.config import DetectionDataConfig
from components.detection.data.dataset import read_split
from components.detection.data.stage import STAGE as DATA
from components.detection.saved import Detector
from components.detection.serve import load as load_served
from components.detection.stage import STAGE as DETECTOR
from components.stage import RecordingLogger, StageInputError, StageIO, StageLogger

STEPS = 8


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "shapes"
    config = build(DetectionDataConfig, {"source": "shapes", "count": 48, "size": 48,
                                         "max_objects": 4, "val_fraction": 0.25})  # fmt: skip
    DATA.run(config, StageIO({}, {"images": out}))
    return out


def _config(**overrides):
    model = {"backbone": {"channels": [8, 16, 32], "norm_groups": 4}, "dim": 32, "heads": 2,
             "encoder_layers": 1, "decoder_layers": 2, "num_queries": 6, "anchors": True,
             "denoising": {"enabled": True, "groups": 2}} | overrides.pop("model", {})  # fmt: skip
    train = {"steps": STEPS, "batch_size": 8, "lr": 1e-3, "val_every": 4, "checkpoint_every": 4,
             "log_every": 2, "progress": False} | overrides.pop("train", {})  # fmt: skip
    return build(DETECTOR.config, {"model": model, "train": train, "eval_images": 8, **overrides})


def _train(config, images, out, work=None, log=None):
    io = StageIO({"images": images}, {"model": out}, work, log or RecordingLogger())
    return DETECTOR.run(config, io), io.log


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("detector") / "model"
    result, log = _train(_config(), shapes, out)
    return out, result, log


def test_stage_trains_saves_and_reports_coco_metrics(trained, shapes):
    out, result, log = trained
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    assert {"ap", "ap50", "ap75", "ar100"} <= set(result.metrics)
    assert all(-1 <= result.metrics[k] <= 1 for k in ("ap", "ap50"))
    curves = log.series()
    assert [s for s, _ in curves["eval/ap50"]] == [4, 8]
    assert {"train/loss_ce", "train/loss_giou", "train/loss_ce_dn"} <= set(curves)
    detector = Detector.load(out)
    val = read_split(shapes, "val")
    found = detector.detect([r.image for r in val[:3]])
    assert len(found) == 3 and found[0].boxes.shape[1] == 4
    assert (found[0].scores[:-1] >= found[0].scores[1:]).all()  # best first


def test_served_model_answers_coco_style(trained, shapes):
    served = load_served(trained[0])
    image = read_split(shapes, "val")[0].image
    (answer,) = served.predict([image.tolist()])
    assert answer and set(answer[0]) == {"label", "category_id", "score", "bbox"}
    assert answer[0]["label"] in Detector.load(trained[0]).classes


class CrashAt(StageLogger):
    def __init__(self, step: int):
        self.step = step

    def log_metrics(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt(f"crash at step {step}")


def test_a_crashed_run_resumes_to_the_weights_of_an_uninterrupted_one(trained, shapes, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(_config(), shapes, tmp_path / "m", work=tmp_path / "work", log=CrashAt(4))
    _train(_config(), shapes, tmp_path / "m", work=tmp_path / "work")
    resumed = Detector.load(tmp_path / "m").network.state_dict()
    straight = Detector.load(trained[0]).network.state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"num_queries": 2}}, r"an image holds \d+ objects but model\.num_queries = 2"),
        ({"train": {"batch_size": 64}}, r"train\.parquet: \d+ training images, fewer than one "
         r"batch \(train\.batch_size = 64\)"),
    ],
)  # fmt: skip
def test_data_that_does_not_fit_fails_before_training(shapes, tmp_path, overrides, message):
    with pytest.raises(StageInputError, match=message):
        _train(_config(**overrides), shapes, tmp_path / "m", work=tmp_path / "work")
    assert not (tmp_path / "m").exists() and not (tmp_path / "work").exists()
