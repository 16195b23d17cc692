"""The evaluate_diffusion stage, on real image stores with small random models: what it
writes, that its figures are what its parts compute, and its refusals. (What the figures
reach with trained models is measured in the pipeline and benchmarks/diffusion.py.)"""

import json

import numpy as np
import pytest
import torch

from components.config import build
from components.detection.config import DetrConfig
from components.detection.model import Detr
from components.detection.saved import Detector
from components.stage import StageInputError, StageIO
from components.vision.autoencoder.config import NetworkConfig, QuantizerConfig
from components.vision.autoencoder.model import build_network
from components.vision.autoencoder.saved import Autoencoder
from components.vision.data.config import ImagesConfig
from components.vision.data.digits import DIGIT_NAMES
from components.vision.data.shapes import SHAPES
from components.vision.data.stage import STAGE as IMAGES
from components.vision.data.store import read_images
from components.vision.diffusion.evaluation.frechet import frechet_distance
from components.vision.diffusion.evaluation.stage import STAGE as EVALUATE
from components.vision.features.config import FeatureNetworkConfig
from components.vision.features.heads import agreement, expected, heads_for
from components.vision.features.model import FeatureNetwork
from components.vision.features.saved import FeatureNet
from components.vision.grid import decode_png
from tests.components.vision.diffusion.tiny import tiny_model

HELD_OUT = ["yellow circle", "green square"]
# the tiny model reads bytes: its prompts outrun its 16 tokens (truncation is tested elsewhere)
pytestmark = pytest.mark.filterwarnings("ignore:prompt .* truncated")


def _store(root, **data):
    out = root / "images"
    IMAGES.run(build(ImagesConfig, data), StageIO(inputs={}, outputs={"images": out}))
    return out


def _features(root, heads, channels):
    torch.manual_seed(0)
    network = FeatureNetwork(
        FeatureNetworkConfig(channels=[8, 16], feature_dim=16), channels, 32, heads
    )
    return FeatureNet(network, 32).save(root / "features")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_digits")
    images = _store(root, source="digits", limit=120, val_fraction=0.3)
    heads = heads_for("digits", DIGIT_NAMES, 0)
    return {"model": tiny_model().save(root / "model"), "features": _features(root, heads, 1),
            "images": images}  # fmt: skip


def _rgb_model(held_out):
    model = tiny_model()
    torch.manual_seed(1)
    network = build_network(
        "kl", build(NetworkConfig, {"channels": 8, "max_channels": 8, "norm_groups": 4}),
        QuantizerConfig(), 3,
    )  # fmt: skip
    model.autoencoder = Autoencoder(network, 32)
    model.held_out = list(held_out)
    return model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_shapes")
    images = _store(root, source="shapes", shapes={"count": 60}, val_fraction=0.3)
    return {
        "model": _rgb_model(HELD_OUT).save(root / "model"),
        "features": _features(root, heads_for("shapes", [], 2), 3),
        "images": images,
        "detector": _detector(root / "detector", SHAPES),
    }


def _detector(root, classes):
    torch.manual_seed(0)
    config = build(DetrConfig, {"backbone": {"channels": [8, 16], "norm_groups": 4}, "dim": 16,
                                "heads": 2, "encoder_layers": 1, "decoder_layers": 1,
                                "num_queries": 4})  # fmt: skip
    return Detector(Detr(config, len(classes)), classes, image_size=64, top_k=4).save(root)


def _config(**changes):
    data = {"prompts": 12, "guidance": [1.0, 4.0], "sampler": {"kind": "ddim", "steps": 2},
            "grid_images": 8, "batch_size": 5,
            "detector": {"per_prompt": 1, "threshold": 0.0}} | changes  # fmt: skip
    return build(EVALUATE.config, data)


def test_fd_and_prompt_accuracy_per_guidance_with_their_floors(digits, tmp_path):
    out = tmp_path / "report"
    result = EVALUATE.run(_config(), StageIO(dict(digits), {"report": out}))
    m = result.metrics
    assert m["prompts"] == 12
    for g in ("g1", "g4"):
        assert m[f"fd/{g}"] >= 0 and 0 <= m[f"prompt_accuracy/{g}"] <= 1
        assert m[f"prompt_accuracy/class/{g}"] == m[f"prompt_accuracy/{g}"]  # one head
    assert m["fd"] == min(m["fd/g1"], m["fd/g4"])
    assert m["prompt_accuracy"] == max(m["prompt_accuracy/g1"], m["prompt_accuracy/g4"])
    assert m["fd/g1"] != m["fd/g4"]  # the guidance changed the samples
    assert "compositional_accuracy" not in m  # no detector input

    # the floors are what the parts compute on val images 0..11 (the prompts') and 12..23
    net = FeatureNet.load(digits["features"])
    val = read_images(digits["images"] / "val.parquet")
    real, reference = net.features(val.images[:12]), net.features(val.images[12:24])
    assert m["fd/real"] == pytest.approx(frechet_distance(real.numpy(), reference.numpy()))
    pairs = zip(val.captions[:12], val.labels[:12], strict=True)
    wanted = [expected(net.heads, c, lab) for c, lab in pairs]
    assert m["prompt_accuracy/real"] == agreement(net.predict(val.images[:12]), wanted)["all"]
    rows = json.loads((out / "guidance.json").read_text())
    assert [r["guidance"] for r in rows] == [1.0, 4.0] and rows[0]["fd"] == m["fd/g1"]
    grid = decode_png((out / "samples_g4.png").read_bytes())
    assert grid.shape == (34 + 2, 8 * 34 + 2, 3)  # 8 samples in one row, 32 px each
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["fd"] == m["fd"] and summary["held_out"] == []
    assert (out / "guidance.png").read_bytes()[:4] == b"\x89PNG"


def test_every_sample_has_its_own_noise_and_a_rerun_is_identical(digits, tmp_path):
    config = _config(guidance=[2.0], grid_images=8)
    EVALUATE.run(config, StageIO(dict(digits), {"report": tmp_path / "a"}))
    EVALUATE.run(config, StageIO(dict(digits), {"report": tmp_path / "b"}))
    first = (tmp_path / "a" / "samples_g2.png").read_bytes()
    assert first == (tmp_path / "b" / "samples_g2.png").read_bytes()
    grid = decode_png(first)
    tiles = [grid[2:34, 2 + 34 * i : 34 + 34 * i] for i in range(8)]
    assert all(not np.array_equal(tiles[0], t) for t in tiles[1:])


def test_held_out_combinations_are_scored_by_the_detector(shapes, tmp_path):
    out = tmp_path / "report"
    result = EVALUATE.run(_config(), StageIO(dict(shapes), {"report": out}))
    m = result.metrics
    assert m["compositional_prompts"] == 2 * 1 * 4  # 2 bindings, ordered pairs, 4 relations
    for g in ("g1", "g4"):
        for key in ("compositional", "compositional_single", "compositional/counting",
                    "compositional/objects", "compositional/position"):  # fmt: skip
            assert 0 <= m[f"{key}/{g}"] <= 1
    assert 0 <= m["compositional/real"] <= 1
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["held_out"] == HELD_OUT
    assert (
        "a medium yellow circle left of a medium green square" in summary["compositional_prompts"]
    )
    # prompts come from val captions without a held-out phrase
    assert not any("yellow circle" in p or "green square" in p for p in summary["prompts"])
    assert (out / "compositional_g4.png").exists()


def test_inputs_that_do_not_fit_are_refused(digits, shapes, tmp_path):
    io = StageIO({**digits, "features": shapes["features"]}, {"report": tmp_path / "a"})
    with pytest.raises(
        StageInputError, match=r"a feature network for 32 px × 3 channels, but .* holds 32 px × 1"
    ):
        EVALUATE.run(_config(), io)
    io = StageIO({**digits, "detector": shapes["detector"]}, {"report": tmp_path / "b"})
    with pytest.raises(
        StageInputError,
        match=r"the detector's classes \['circle', .* are not "
        r"\['zero', .*without held_out phrases it judges the images' classes",
    ):
        EVALUATE.run(_config(), io)
    one = _rgb_model(["yellow circle"]).save(tmp_path / "one")
    io = StageIO({**shapes, "model": one}, {"report": tmp_path / "c"})
    with pytest.raises(StageInputError, match="at least 2 distinct held-out bindings"):
        EVALUATE.run(_config(), io)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_without_held_out_phrases_a_detector_of_the_classes_judges_the_digit(digits, tmp_path):
    detector = _detector(tmp_path / "detector", DIGIT_NAMES)
    io = StageIO({**digits, "detector": detector}, {"report": tmp_path / "r"})
    m = EVALUATE.run(_config(detector={"threshold": 0.0}), io).metrics
    # threshold 0 keeps all 4 queries: never exactly one object, so never right
    assert m["detected/g1"] == m["detected/real"] == m["detected_accuracy"] == 0.0
    io = StageIO({**digits, "detector": detector}, {"report": tmp_path / "s"})
    m = EVALUATE.run(_config(detector={"threshold": 1.0}), io).metrics
    assert m["detected_accuracy"] == 0.0 and "compositional_accuracy" not in m
