"""The feature_net stage on real data: 600 MNIST digits and 300 generated shapes images."""

import numpy as np
import pytest

from components.config import build
from components.stage import RecordingLogger, StageInputError, StageIO
from components.vision.data.config import ImagesConfig
from components.vision.data.stage import STAGE as IMAGES
from components.vision.data.store import read_images
from components.vision.features.saved import FeatureNet
from components.vision.features.stage import STAGE as FEATURES


def _images(root, **data):
    out = root / "images"
    IMAGES.run(build(ImagesConfig, data), StageIO(inputs={}, outputs={"images": out}))
    return out


def _config(readout=("mean", "max"), **train):
    return build(
        FEATURES.config,
        {
            "network": {"channels": [16, 32], "feature_dim": 32, "readout": list(readout)},
            "train": {"steps": 150, "batch_size": 32, "lr": 3e-3, "log_every": 50,
                      "val_every": 150, "progress": False, **train},
        },
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("features_digits")
    images = _images(root, source="digits", limit=600, val_fraction=0.2)
    log = RecordingLogger()
    # flatten learns the centred digits fastest (and the flatten path is tested here)
    config = _config(readout=("flatten", "mean", "max"))
    result = FEATURES.run(config, StageIO({"images": images}, {"model": root / "m"}, None, log))
    return images, root / "m", result, log


def test_digit_classifier_learns_and_reports_val_accuracy(digits):
    images, model_dir, result, log = digits
    assert result.metrics["accuracy"] > 0.8  # 150 steps on 480 digits; chance is 0.1
    assert result.metrics["accuracy/class"] == result.metrics["accuracy"]
    assert any("val/accuracy" in m for _, m in log.metrics)
    net = FeatureNet.load(model_dir)
    val = read_images(images / "val.parquet")
    shown = net.predict(val.images)
    right = np.mean(
        [
            s["class"] == {net.heads[0].names[lab[0]]}
            for s, lab in zip(shown, val.labels, strict=True)
        ]
    )
    assert right == pytest.approx(result.metrics["accuracy"])
    assert net.features(val.images[:5]).shape == (5, 32)


def test_shapes_heads_read_attributes_from_captions(tmp_path):
    images = _images(tmp_path, source="shapes", shapes={"count": 300}, val_fraction=0.2)
    result = FEATURES.run(
        _config(steps=60, val_every=60), StageIO({"images": images}, {"model": tmp_path / "m"})
    )
    net = FeatureNet.load(tmp_path / "m")
    assert [h.name for h in net.heads] == ["shape", "colour", "size", "count"]
    assert {
        "accuracy/shape",
        "accuracy/colour",
        "accuracy/size",
        "accuracy/count",
    } <= result.metrics.keys()
    assert result.metrics["accuracy/count"] > 0.6  # 1 or 2 objects: the easy head first


def test_wrong_images_are_refused_naming_the_shape(digits):
    _, model_dir, _, _ = digits
    net = FeatureNet.load(model_dir)
    with pytest.raises(ValueError, match=r"takes uint8 \[N, 32, 32, 1\]"):
        net.features(np.zeros((2, 32, 32, 3), np.uint8))


def test_a_set_smaller_than_a_batch_is_refused(tmp_path):
    images = _images(tmp_path, source="digits", limit=20)
    with pytest.raises(StageInputError, match="fewer than one batch"):
        FEATURES.run(_config(), StageIO({"images": images}, {"model": tmp_path / "m"}))
