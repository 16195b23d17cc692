import pytest
import torch

from components.action.features import frame_features, with_motion
from components.action.features_stage import STAGE as FEATURES
from components.action.store import FEATURES_FORMAT, read_features, read_meta
from components.action.streams_stage import STAGE as STREAMS
from components.config import build
from components.stage import StageInputError, StageIO
from components.vision.autoencoder.config import NetworkConfig, QuantizerConfig
from components.vision.autoencoder.model import build_network
from components.vision.autoencoder.saved import Autoencoder


def _autoencoder(channels=3):
    torch.manual_seed(0)
    network = build_network(
        "kl", build(NetworkConfig, {"channels": 8, "max_channels": 8, "norm_groups": 4}),
        QuantizerConfig(), channels,
    )  # fmt: skip
    return Autoencoder(network.eval(), 32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("action_features")
    config = build(STREAMS.config, {"frames": 200, "train_streams": 1, "val_streams": 1,
                                    "test_streams": 1, "max_length": 30})  # fmt: skip
    STREAMS.run(config, StageIO({}, {"streams": root / "streams"}))
    _autoencoder().save(root / "autoencoder")
    return {"streams": root / "streams", "autoencoder": root / "autoencoder"}


def test_appearance_is_pooled_latents_and_motion_their_lagged_differences():
    ae = _autoencoder()
    frames = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    plain = frame_features(ae, frames, pool=2, motion=[])
    assert plain.shape == (6, 4 * 2 * 2)  # 4 latent channels, pooled to 2x2
    both = frame_features(ae, frames, pool=2, motion=[1, 4])
    assert both.shape == (6, 3 * 16)
    assert torch.equal(both[:, :16], plain)
    one, four = both[:, 16:32], both[:, 32:]
    assert torch.allclose(one[1:], plain[1:] - plain[:-1]) and not one[0].any()
    assert torch.allclose(four[4:], plain[4:] - plain[:-4])
    assert torch.allclose(four[:4], plain[:4] - plain[0])  # from frame 0 until 4 have passed
    assert torch.equal(with_motion(plain, [1, 4]), both)


def test_a_frame_seen_online_gets_the_batch_features():
    """Frame t's features come from frames t-3..t alone (lags up to 3): computing them from
    the latest frames, as a stream arrives, gives the batch computation's."""
    ae = _autoencoder()
    frames = torch.randint(0, 256, (7, 32, 32, 3), dtype=torch.uint8)
    batch = frame_features(ae, frames, pool=4, motion=[1, 3], batch=2)
    for t in range(3, 7):
        online = frame_features(ae, frames[t - 3 : t + 1], pool=4, motion=[1, 3])[-1]
        assert torch.allclose(online, batch[t], atol=1e-6)


def test_the_stage_writes_features_with_the_streams_labels(inputs, tmp_path):
    out = tmp_path / "features"
    result = FEATURES.run(
        build(FEATURES.config, {"pool": 2, "motion": [1]}),
        StageIO(dict(inputs), {"features": out}),
    )
    meta = read_meta(out, FEATURES_FORMAT)
    assert meta["dim"] == 32 == result.metrics["dim"] and meta["motion"] == [1]
    source = read_meta(inputs["streams"])
    for split in ("train", "val", "test"):
        (entry,) = meta["streams"][split]
        stored = read_features(out, meta, entry)
        assert stored.features.shape == (200, 32)
        assert entry["instances"] == source["streams"][split][0]["instances"]
    assert result.metrics["frames"] == 600


def test_an_autoencoder_of_grey_images_is_refused(inputs, tmp_path):
    _autoencoder(channels=1).save(tmp_path / "grey")
    io = StageIO({**inputs, "autoencoder": tmp_path / "grey"}, {"features": tmp_path / "f"})
    with pytest.raises(StageInputError, match="32 px × 1 channels, but the streams .* RGB"):
        FEATURES.run(build(FEATURES.config, {}), io)


def test_a_features_file_of_another_dim_is_refused(inputs, tmp_path):
    out = tmp_path / "features"
    FEATURES.run(build(FEATURES.config, {"pool": 1}), StageIO(dict(inputs), {"features": out}))
    meta = read_meta(out, FEATURES_FORMAT)
    meta["dim"] = 64
    with pytest.raises(StageInputError, match=r"expected float \[T, 64\]"):
        read_features(out, meta, meta["streams"]["val"][0])


@pytest.mark.parametrize("motion", [[0], [2, 2], [1.5], True])
def test_motion_lags_other_than_distinct_positive_ints_are_refused(motion):
    with pytest.raises(ValueError, match="motion"):
        build(FEATURES.config, {"motion": motion})
