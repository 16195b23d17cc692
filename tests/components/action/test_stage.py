"""train_action on real (small) streams through a small random encoder: what it saves and
reports, exact resume after a crash, and refusals."""

import json

import pytest
import torch

from components.action.features_stage import STAGE as FEATURES
from components.action.saved import ActionDetector
from components.action.stage import STAGE as TRAIN
from components.action.store import FEATURES_FORMAT, read_features, read_meta
from components.action.streams import ACTIONS
from components.action.streams_stage import STAGE as STREAMS
from components.config import build
from components.stage import RecordingLogger, StageInputError, StageIO
from tests.components.action.test_features import _autoencoder


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_action")
    config = build(STREAMS.config, {"frames": 240, "train_streams": 2, "val_streams": 1,
                                    "test_streams": 1, "max_length": 30})  # fmt: skip
    STREAMS.run(config, StageIO({}, {"streams": root / "streams"}))
    _autoencoder().save(root / "autoencoder")
    io = StageIO({"streams": root / "streams", "autoencoder": root / "autoencoder"},
                 {"features": root / "features"})  # fmt: skip
    FEATURES.run(build(FEATURES.config, {"pool": 2}), io)
    return root / "features"


def _config(model="oadtr", steps=8):
    causal = model == "causal"
    oadtr = {"window": 8, "future": 2, "dim": 16, "heads": 2, "dropout": 0.0}
    if causal:
        oadtr |= {"attention": "linear", "causal": True}
    return build(TRAIN.config, {
        "model": "oadtr" if causal else model,
        "recurrent": {"cell": "lstm", "hidden": 16},
        "oadtr": oadtr,
        "chunk": 16, "burn_in": 4,
        "train": {"steps": steps, "batch_size": 16, "lr": 1e-3, "log_every": 2, "val_every": 4,
                  "checkpoint_every": 4, "progress": False},
    })  # fmt: skip


class CrashAt(RecordingLogger):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def log_metrics(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt
        super().log_metrics(step, metrics)


@pytest.mark.parametrize("model", ["recurrent", "oadtr", "causal"])
def test_a_detector_is_saved_with_val_map(features, tmp_path, model):
    out = tmp_path / "model"
    result = TRAIN.run(_config(model), StageIO({"features": features}, {"model": out}))
    assert {"loss", "accuracy", "val_map", "val_cmap", "steps"} <= result.metrics.keys()
    assert 0 <= result.metrics["val_map"] <= 1
    detector = ActionDetector.load(out)
    assert detector.kind == ("oadtr" if model == "causal" else model)
    assert detector.classes == list(ACTIONS)
    names = {"recurrent": "RecurrentDetector", "oadtr": "OadTR", "causal": "CausalOadTR"}
    assert type(detector.network).__name__ == names[model]
    meta = read_meta(features, FEATURES_FORMAT)
    stored = read_features(features, meta, meta["streams"]["test"][0])
    probs = detector.probabilities(stored.features)
    assert probs.shape == (240, len(ACTIONS)) and torch.allclose(probs.sum(1), torch.ones(240))


def test_a_crashed_run_resumes_to_the_weights_of_an_uninterrupted_one(features, tmp_path):
    config = _config("oadtr", steps=8)
    straight = tmp_path / "straight"
    TRAIN.run(config, StageIO({"features": features}, {"model": straight}, tmp_path / "w1"))
    work = tmp_path / "w2"
    with pytest.raises(KeyboardInterrupt):
        TRAIN.run(
            config, StageIO({"features": features}, {"model": tmp_path / "a"}, work, CrashAt(6))
        )
    TRAIN.run(config, StageIO({"features": features}, {"model": tmp_path / "a"}, work))
    a = ActionDetector.load(tmp_path / "a").network.state_dict()
    b = ActionDetector.load(straight).network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_streams_shorter_than_a_chunk_are_refused(features, tmp_path):
    config = build(TRAIN.config, {"model": "recurrent", "chunk": 500, "burn_in": 4})
    with pytest.raises(StageInputError, match="240 frames, shorter than a chunk of 500"):
        TRAIN.run(config, StageIO({"features": features}, {"model": tmp_path / "m"}))


def test_evaluation_scores_the_test_streams_and_draws_a_timeline(features, tmp_path):
    from components.action.evaluate_stage import STAGE as EVALUATE
    from components.action.metrics import frame_map

    TRAIN.run(_config("recurrent"), StageIO({"features": features}, {"model": tmp_path / "m"}))
    io = StageIO({"features": features, "model": tmp_path / "m"}, {"report": tmp_path / "r"})
    config = build(EVALUATE.config, {"timeline": 100, "latency_frames": 20, "threads": 1})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        m = EVALUATE.run(config, io).metrics
        assert torch.get_num_threads() == 2  # the stage's one thread did not leak out
    finally:
        torch.set_num_threads(threads)
    meta = read_meta(features, FEATURES_FORMAT)
    stored = read_features(features, meta, meta["streams"]["test"][0])
    probs = ActionDetector.load(tmp_path / "m").probabilities(stored.features).numpy()
    expected = frame_map(probs, stored.labels.numpy(), list(ACTIONS))
    assert m["map"] == pytest.approx(expected["map"]) and m["cmap"] == pytest.approx(
        expected["cmap"]
    )
    assert 0 <= m["onset_map"] <= 1 and m["frames_per_second"] > 0 and m["frames"] == 240
    assert (tmp_path / "r" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "r" / "timeline.json").read_text())) == 100
    assert "ap/background" not in m


def test_a_detector_saved_before_the_feature_scale_is_refused_by_version(features, tmp_path):
    out = tmp_path / "model"
    TRAIN.run(_config("recurrent", steps=2), StageIO({"features": features}, {"model": out}))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "version": 1}))
    with pytest.raises(StageInputError, match="version 1, expected format 'loom-action-detector'"):
        ActionDetector.load(out)
