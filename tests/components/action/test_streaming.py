import pytest
import torch

from components.action.causal_oadtr import CausalOadTR
from components.action.config import OadTRConfig, RecurrentConfig
from components.action.models import OadTR, RecurrentDetector
from components.action.streaming import OnlineDetector, offline, windows

D, K = 10, 4


def _models():
    torch.manual_seed(0)
    return [
        RecurrentDetector(RecurrentConfig(cell="lstm", hidden=16), D, K),
        RecurrentDetector(RecurrentConfig(cell="gru", hidden=16), D, K),
        OadTR(OadTRConfig(window=6, future=2, dim=16, heads=2, dropout=0.0), D, K),
        OadTR(OadTRConfig(window=6, future=0, dim=16, heads=2, attention="linear"), D, K),
        CausalOadTR(
            OadTRConfig(
                window=6,
                future=3,
                dim=16,
                heads=2,
                attention="linear",
                causal=True,
                decoder_layers=2,
            ),
            D,
            K,
        ),  # fmt: skip
        CausalOadTR(
            OadTRConfig(window=6, future=0, dim=16, heads=2, attention="linear", causal=True), D, K
        ),  # fmt: skip
    ]


def test_windows_hold_the_past_with_padding_before_the_start():
    features = torch.arange(5.0)[:, None].repeat(1, 2)  # frame t's features are t
    stacked, padding = windows(features, 3)
    assert stacked.shape == (5, 3, 2)
    assert stacked[4, :, 0].tolist() == [2.0, 3.0, 4.0]
    assert stacked[0, :, 0].tolist() == [0.0, 0.0, 0.0] and padding[0].tolist() == [
        True,
        True,
        False,
    ]
    assert not padding[2:].any()


@pytest.mark.parametrize("traced", [True, False])
@pytest.mark.parametrize("index", range(6))
def test_streaming_equals_the_batched_causal_forward(index, traced):
    model = _models()[index]
    features = torch.randn(15, D)  # longer than OadTR's window: the ring wraps
    online = OnlineDetector(model, traced=traced)
    stepped = torch.stack([online.step(f) for f in features])
    assert torch.allclose(stepped, offline(model, features, batch=4), atol=1e-5)
    online.reset()
    assert torch.allclose(online.step(features[0]), stepped[0], atol=1e-6)


@pytest.mark.parametrize("index", range(6))
def test_no_peeking_at_future_frames(index):
    model = _models()[index]
    features = torch.randn(12, D)
    before = offline(model, features)
    features[8] += 10.0
    after = offline(model, features)
    assert torch.allclose(before[:8], after[:8], atol=1e-6)
    assert not torch.allclose(before[8], after[8])
