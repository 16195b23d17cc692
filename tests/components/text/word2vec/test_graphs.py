"""CUDA-graph replay of word2vec's batch step: the same updates as the eager step."""

from __future__ import annotations

import pytest
import torch

from components.text.word2vec.data import AliasTable, Windows, windows
from components.text.word2vec.graphs import GraphedKernel
from components.text.word2vec.sgd import SgdKernel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def batches(n: int, vocab: int, window: int, batch_size: int, seed: int, device: str = "cuda"):
    """Windows of a random corpus of `n` positions in sentences of 1..30, as the trainer cuts
    them: full batches and a shorter last one per radius."""
    gen = torch.Generator(device).manual_seed(seed)
    ids = torch.randint(0, vocab, (n,), generator=gen, device=device)
    sent = torch.cumsum(torch.rand(n, generator=gen, device=device) < 1 / 15, 0)
    table = AliasTable(torch.rand(vocab).double().numpy(), device)
    for group in windows(ids, sent, window, gen):
        for start in range(0, len(group), batch_size):
            batch = group.slice(start, start + batch_size)
            yield batch, table.draw((len(batch), 5), gen)


def weights(vocab: int, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    init = torch.Generator().manual_seed(0)
    w_in = (torch.rand(vocab, dim, generator=init) - 0.5) / dim
    w_out = (torch.rand(vocab, dim, generator=init) - 0.5) / dim
    return w_in.to(device), w_out.to(device)


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_empty_windows_change_nothing(mode):
    """What replay at a fixed batch size relies on: padding a batch with all-masked windows
    leaves the loss, the example count and every update as they were (CPU, exact)."""
    w_in, w_out = weights(200, 16, "cpu")
    plain = SgdKernel(w_in.clone(), w_out.clone(), mode, 1, update_cap=4)
    padded = SgdKernel(w_in.clone(), w_out.clone(), mode, 1, update_cap=4)
    for batch, negs in batches(3000, 200, 3, 100, seed=2, device="cpu"):
        extra = 37
        grown = Windows(
            torch.cat([batch.centers, torch.randint(0, 200, (extra,))]),
            torch.cat([batch.context, torch.randint(0, 200, (extra, batch.context.shape[1]))]),
            torch.cat([batch.mask, torch.zeros(extra, batch.mask.shape[1], dtype=torch.bool)]),
        )
        more_negs = torch.cat([negs, torch.randint(0, 200, (extra, negs.shape[1]))])
        want, got = plain.step(batch, negs, 0.05), padded.step(grown, more_negs, 0.05)
        assert float(got[1]) == float(want[1])
        torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(padded.w_in, plain.w_in, rtol=0, atol=1e-7)
    torch.testing.assert_close(padded.w_out, plain.w_out, rtol=0, atol=1e-7)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_graph_replay_equals_the_eager_step(mode):
    vocab, dim = 500, 32
    w_in, w_out = weights(vocab, dim, "cuda")
    eager = SgdKernel(w_in.clone(), w_out.clone(), mode, 1, update_cap=8)
    graphed = GraphedKernel(SgdKernel(w_in.clone(), w_out.clone(), mode, 1, 8), 256, 5)
    losses = []
    for i, (batch, negs) in enumerate(batches(6000, vocab, 4, 256, seed=1)):
        alpha = 0.05 * (1 - i / 100)
        want, got = eager.step(batch, negs, alpha), graphed.step(batch, negs, alpha)
        losses.append((float(want[0]), float(got[0]), float(want[1]), float(got[1])))
    assert not graphed.failed and sorted(graphed.captured) == [2, 4, 6, 8]
    for want_loss, got_loss, want_n, got_n in losses:
        assert got_n == want_n
        assert got_loss == pytest.approx(want_loss, rel=1e-4)
    # index_add_ on CUDA sums in no fixed order: equal up to float rounding
    torch.testing.assert_close(graphed.kernel.w_in, eager.w_in, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(graphed.kernel.w_out, eager.w_out, rtol=1e-4, atol=1e-6)
    assert not torch.equal(eager.w_in, w_in)  # the steps did update


def test_graphs_need_a_cuda_kernel():
    kernel = SgdKernel(torch.zeros(3, 2), torch.zeros(3, 2), "skipgram", 1, None)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedKernel(kernel, 8, 5)


class RecordingKernel:
    """Stands in for a CUDA `SgdKernel`: records which batches ran eagerly."""

    device = torch.device("cuda")

    def __init__(self):
        self.eager: list[int] = []

    def step(self, batch, negs, alpha):
        self.eager.append(len(batch))
        return torch.tensor(0.0), torch.tensor(len(batch))


def windows_of(n: int, width: int) -> Windows:
    return Windows(
        torch.zeros(n, dtype=torch.int64),
        torch.zeros(n, width, dtype=torch.int64),
        torch.ones(n, width, dtype=torch.bool),
    )


def test_failed_capture_falls_back_to_eager_steps(monkeypatch, capsys):
    def refuse(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr("components.text.word2vec.graphs._CapturedStep", refuse)
    kernel = RecordingKernel()
    graphed = GraphedKernel(kernel, 8, 5)
    for n in (8, 3, 8):
        loss, count = graphed.step(windows_of(n, 4), torch.zeros(n, 5, dtype=torch.int64), 0.1)
        assert int(count) == n
    assert graphed.failed and kernel.eager == [8, 3, 8]  # no second capture attempt
    assert "CUDA graph capture failed, running eagerly" in capsys.readouterr().err


def test_batches_beyond_the_captured_size_run_eagerly():
    kernel = RecordingKernel()
    graphed = GraphedKernel(kernel, 8, 5)
    graphed.step(windows_of(9, 2), torch.zeros(9, 5, dtype=torch.int64), 0.1)
    assert kernel.eager == [9] and not graphed.captured and not graphed.failed
