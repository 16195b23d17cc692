import pytest
import torch

from components.action.causal_oadtr import CausalOadTR
from components.action.config import OadTRConfig, RecurrentConfig
from components.action.models import OadTR, RecurrentDetector
from components.config import ConfigError, build

D, K = 12, 5


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_recurrent_output_at_t_sees_frames_up_to_t_only(cell):
    torch.manual_seed(0)
    model = RecurrentDetector(RecurrentConfig(cell=cell, hidden=16), D, K).eval()
    x = torch.randn(2, 10, D)
    logits, _ = model(x)
    assert logits.shape == (2, 10, K)
    perturbed = x.clone()
    perturbed[:, 6] += 5.0  # frame 6 changes: frames 0..5 must not
    again, _ = model(perturbed)
    assert torch.equal(again[:, :6], logits[:, :6]) and not torch.allclose(
        again[:, 6], logits[:, 6]
    )
    # carried state: two halves in turn equal the whole
    first, state = model(x[:, :4])
    second, _ = model(x[:, 4:], state)
    assert torch.allclose(torch.cat([first, second], 1), logits, atol=1e-6)


def test_oadtr_shapes_and_the_task_token_is_what_the_classifier_reads():
    torch.manual_seed(0)
    config = OadTRConfig(window=8, future=3, dim=16, heads=2, dropout=0.0)
    model = OadTR(config, D, K).eval()
    windows = torch.randn(4, 8, D)
    current, future = model(windows)
    assert current.shape == (4, K) and future.shape == (4, 3, K)
    # recompute by hand: the classifier's input is [task token output; mean decoder output]
    tokens = torch.cat([model.task_token.expand(4, 1, -1), model.embed(windows)], 1)
    memory = model.encoder(tokens)
    decoded = model.decoder(model.queries.expand(4, -1, -1), memory)
    expected = model.classify(torch.cat([memory[:, 0], decoded.mean(1)], 1))
    assert torch.allclose(current, expected, atol=1e-6)
    # no decoder (ℓ = 0): the task token's output alone
    plain = OadTR(OadTRConfig(window=8, future=0, dim=16, heads=2), D, K).eval()
    out, none = plain(windows)
    tokens = torch.cat([plain.task_token.expand(4, 1, -1), plain.embed(windows)], 1)
    assert none is None and torch.allclose(
        out, plain.classify(plain.encoder(tokens)[:, 0]), atol=1e-6
    )


def test_oadtr_padding_hides_frames_before_the_stream_started():
    torch.manual_seed(0)
    model = OadTR(OadTRConfig(window=6, future=2, dim=16, heads=2, dropout=0.0), D, K).eval()
    windows = torch.randn(1, 6, D)
    mask = torch.tensor([[True, True, False, False, False, False]])
    out, _ = model(windows, mask)
    windows[:, :2] = 99.0  # what lies under the padding does not matter
    again, _ = model(windows, mask)
    assert torch.allclose(out, again, atol=1e-5)
    with pytest.raises(ValueError, match="windows of 5 frames: the model's window is 6"):
        model(torch.randn(1, 5, D))


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [(OadTRConfig, {"window": 0}, "window"), (OadTRConfig, {"future": -1}, "future"),
     (OadTRConfig, {"attention": "sparse"}, "softmax|linear"),
     (OadTRConfig, {"causal": True}, "linear with causal: true"),
     (RecurrentConfig, {"cell": "transformer"}, "rnn|gru|lstm")],
)  # fmt: skip
def test_bad_model_config_names_the_key(cls, data, message):
    with pytest.raises(ConfigError, match=message):
        build(cls, data)


def test_causal_oadtr_reads_each_frames_own_token_and_predicts_the_next_l():
    """Every frame is a token; the classifier reads that frame's memory token (its task
    token: it has attended to every frame before) with the pooled decoder output."""
    torch.manual_seed(0)
    config = OadTRConfig(window=8, future=3, dim=16, heads=2, attention="linear", causal=True)
    model = CausalOadTR(config, D, 5).eval()
    features = torch.randn(2, 11, D)
    current, future = model(features)
    assert current.shape == (2, 11, 5) and future.shape == (2, 11, 3, 5)
    memory = model.encoder(model.embed(features))
    decoded = model.queries.expand(2, 11, -1, -1)
    for block in model.blocks:
        decoded = block(decoded, memory)
    decoded = model.norm(decoded)
    read = model.classify(torch.cat([memory, decoded.mean(2)], -1))
    assert torch.allclose(read, current, atol=1e-6)
    assert torch.allclose(model.classify_future(decoded), future, atol=1e-6)
    with pytest.raises(ValueError, match="causal: true"):
        CausalOadTR(OadTRConfig(attention="linear"), D, 5)
