import pytest
import torch

from components.vision.features.config import FeatureNetworkConfig
from components.vision.features.heads import heads_for
from components.vision.features.model import FeatureNetwork, shifted, to_input


def test_network_gives_a_feature_and_logits_per_head():
    heads = heads_for("shapes", [], 2)
    net = FeatureNetwork(FeatureNetworkConfig(channels=[8, 16], feature_dim=12), 3, 32, heads)
    features, logits = net(torch.randn(5, 3, 32, 32))
    assert features.shape == (5, 12)
    assert {k: tuple(v.shape) for k, v in logits.items()} == {
        "shape": (5, 7), "colour": (5, 8), "size": (5, 3), "count": (5, 2),
    }  # fmt: skip


def test_to_input_and_shift():
    pixels = torch.tensor([[[[0], [255]]]], dtype=torch.uint8)  # [1, 1, 2, 1]
    assert to_input(pixels).tolist() == [[[[-1.0, 1.0]]]]
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    moved = shifted(images, 2, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and not torch.equal(moved, images)
    assert shifted(images, 0) is images
    # a shift moves content, it does not change it: every moved image is a crop of the padded one
    assert torch.isin(
        moved[0].flatten(), torch.cat([images[0].flatten(), torch.tensor([-1.0])])
    ).all()


def test_readouts_set_the_projection_and_bad_ones_are_refused():
    from components.config import ConfigError, build

    heads = heads_for("digits", ["a", "b"], 0)
    for readout, width in ((["flatten"], 16 * 8 * 8), (["mean", "max"], 32), (["max"], 16)):
        config = FeatureNetworkConfig(channels=[8, 16], feature_dim=12, readout=readout)
        assert FeatureNetwork(config, 1, 32, heads).project[0].in_features == width
    with pytest.raises(ConfigError, match="readout"):
        build(FeatureNetworkConfig, {"readout": ["avg"]})
