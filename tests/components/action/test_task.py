import pytest
import torch

from components.action.models import feature_scale
from components.action.task import IGNORE, ActionTask, Chunks, Windows
from components.action.train_config import TrainActionConfig
from components.config import ConfigError, build
from components.train import train


def _stream(n=40, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) // 5) % 3  # runs of 5 frames of classes 0, 1, 2
    features = torch.randn(n, d, generator=g) * 0.1
    features[torch.arange(n), labels] += 1.0  # the class shows in the features
    return features, labels


def test_windows_carry_the_current_label_and_the_next_l_frames_labels():
    features, labels = _stream()
    data = Windows([(features, labels)], window=4, future=3)
    assert len(data) == 40
    window, padding, label, ahead = data[10]
    assert torch.equal(window[-1], features[10]) and not padding.any()
    assert label == labels[10] and ahead.tolist() == labels[11:14].tolist()
    _, padding, _, _ = data[1]
    assert padding.tolist() == [True, True, False, False]
    _, _, _, ahead = data[38]  # past the end: no target
    assert ahead.tolist() == [int(labels[39]), IGNORE, IGNORE]


def test_chunks_cover_every_stream_to_its_end():
    features, labels = _stream(n=37)
    data = Chunks([(features, labels)], length=8)
    starts = [start for _, start in data.index]
    assert starts == [0, 4, 8, 12, 16, 20, 24, 28, 29]
    chunk, chunk_labels, ahead = Chunks([(features, labels)], length=8, future=2)[8]
    assert torch.equal(chunk, features[29:]) and torch.equal(chunk_labels, labels[29:])
    assert ahead[0].tolist() == labels[30:32].tolist()  # frame t's labels of t+1, t+2
    assert ahead[-1].tolist() == [IGNORE, IGNORE]  # past the stream's end
    with pytest.raises(ValueError, match="shorter than a chunk"):
        Chunks([(features[:5], labels[:5])], length=8)


@pytest.mark.parametrize(
    "model", [{"model": "recurrent", "recurrent": {"cell": "gru", "hidden": 16}},
              {"model": "oadtr", "oadtr": {"window": 6, "future": 2, "dim": 16, "heads": 2}},
              {"model": "oadtr", "oadtr": {"window": 10, "future": 2, "dim": 16, "heads": 2,
                                           "attention": "linear", "causal": True}}],
)  # fmt: skip
def test_every_kind_learns_a_separable_stream(model):
    config = build(TrainActionConfig, {**model, "chunk": 10, "burn_in": 2,
                   "train": {"steps": 60, "batch_size": 16, "lr": 1e-2, "progress": False,
                             "log_every": 60, "val_every": 60}})  # fmt: skip
    task = ActionTask(config, 6, 3, [_stream(seed=i) for i in range(3)], [_stream(seed=9)])
    result = train(task, config.train)
    assert result.metrics["val/accuracy"] > 0.9


def test_bad_train_config_names_the_key():
    with pytest.raises(ConfigError, match="burn_in"):
        build(TrainActionConfig, {"chunk": 8, "burn_in": 8})
    with pytest.raises(ConfigError, match="recurrent|oadtr"):
        build(TrainActionConfig, {"model": "tcn"})
    causal = {"window": 8, "attention": "linear", "causal": True}
    with pytest.raises(ConfigError, match="oadtr.window = 8"):
        build(TrainActionConfig, {"oadtr": causal, "chunk": 64, "burn_in": 8})


def test_every_model_standardises_its_features_by_the_train_frames():
    """The motion dimensions are tiny beside the appearance ones: each model's first layer
    scales every dimension by the train frames' mean and std, a buffer saved with it."""
    streams = [_stream(seed=i) for i in range(2)]
    spread, offset = (
        torch.tensor([1.0, 1.0, 1.0, 1e-3, 1e-3, 50.0]),
        torch.tensor([3.0, 3, 3, 0, 0, 3]),
    )
    streams = [(f * spread + offset, y) for f, y in streams]
    config = build(TrainActionConfig, {"model": "recurrent", "chunk": 10, "burn_in": 2})
    model = ActionTask(config, 6, 3, streams, []).model()
    frames = torch.cat([f for f, _ in streams])
    scaled = feature_scale(model)(frames)
    assert torch.allclose(scaled.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(scaled.std(0), torch.ones(6), atol=1e-4)
    assert {"embed.0.mean", "embed.0.std"} <= model.state_dict().keys()
