"""The compiled CPU step of word2vec: the eager step's arithmetic, fused by torch.compile."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from components.text.word2vec.compiled import FUSED, CompiledKernel
from components.text.word2vec.data import Windows
from components.text.word2vec.sgd import GRADIENTS, SgdKernel, row_scales
from tests.components.text.word2vec.test_graphs import batches, weights

VOCAB, DIM = 300, 24


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_fused_gradients_equal_the_eager_ones(mode):
    """The broadcast-and-sum formulation (run eagerly here, no compiler) gives the batched
    products' rows, updates, loss and example count, on every radius and a short batch."""
    w_in, w_out = weights(VOCAB, DIM, "cpu")
    widths = set()
    for batch, negs in batches(4000, VOCAB, 4, 150, seed=3, device="cpu"):
        widths.add(batch.context.shape[1])
        scales = row_scales(batch, negs, mode, VOCAB, 4)
        args = (w_in, w_out, batch.centers, batch.context, batch.mask, negs, 0.05, *scales)
        want, got = GRADIENTS[mode](*args), FUSED[mode](*args)
        assert torch.equal(got.in_rows, want.in_rows) and torch.equal(got.out_rows, want.out_rows)
        torch.testing.assert_close(got.in_delta, want.in_delta, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(got.out_delta, want.out_delta, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(got.loss, want.loss)
        assert int(got.pairs) == int(want.pairs)
    assert widths == {2, 4, 6, 8}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trainer runs it
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_compiled_steps_equal_the_eager_steps(mode, one_thread):
    """A run of batches, short ones padded to the batch size, through compiled kernels (one
    per context width) leaves the weights where the eager steps do, up to float rounding."""
    w_in, w_out = weights(VOCAB, DIM, "cpu")
    eager = SgdKernel(w_in.clone(), w_out.clone(), mode, 1, update_cap=4)
    compiled = CompiledKernel(SgdKernel(w_in.clone(), w_out.clone(), mode, 1, 4), 128)
    for batch, negs in batches(2500, VOCAB, 2, 128, seed=4, device="cpu"):
        want, got = eager.step(batch, negs, 0.05), compiled.step(batch, negs, 0.05)
        torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
        assert int(got[1]) == int(want[1])
    assert not compiled.failed
    moved = (eager.w_in - w_in).abs().max()
    assert moved > 1e-3  # the steps did train
    torch.testing.assert_close(compiled.kernel.w_in, eager.w_in, rtol=0, atol=1e-5)
    torch.testing.assert_close(compiled.kernel.w_out, eager.w_out, rtol=0, atol=1e-5)


def test_threads_share_one_compiled_kernel(one_thread):
    """Hogwild's use of the kernel: `warm_up` compiles every width and changes nothing; then
    two threads step the one kernel at once. Their batches touch disjoint rows, so the result
    must equal running the two streams one after the other, exactly."""
    w_in, w_out = weights(2 * VOCAB, DIM, "cpu")
    streams = [
        [(Windows(b.centers + offset, b.context + offset, b.mask), negs + offset)
         for b, negs in batches(2500, VOCAB, 2, 128, seed=seed, device="cpu")]
        for offset, seed in ((0, 6), (VOCAB, 7))
    ]  # fmt: skip
    shared = CompiledKernel(SgdKernel(w_in.clone(), w_out.clone(), "cbow", 1, 4), 128)
    shared.warm_up([2, 4], negative=5)
    assert shared.widths == {2, 4} and not shared.failed
    assert torch.equal(shared.kernel.w_in, w_in) and torch.equal(shared.kernel.w_out, w_out)
    one_by_one = CompiledKernel(SgdKernel(w_in.clone(), w_out.clone(), "cbow", 1, 4), 128)
    for stream in streams:
        for batch, negs in stream:
            one_by_one.step(batch, negs, 0.05)

    def run(stream):
        return [shared.step(batch, negs, 0.05) for batch, negs in stream]

    with (
        shared.shared([2, 4], negative=5),
        ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,)) as pool,
    ):
        list(pool.map(run, streams))
    assert (one_by_one.kernel.w_in - w_in).abs().max() > 1e-3  # the steps did train
    assert torch.equal(shared.kernel.w_in, one_by_one.kernel.w_in)
    assert torch.equal(shared.kernel.w_out, one_by_one.kernel.w_out)


def test_a_shared_kernel_runs_a_cache_miss_eagerly(one_thread):
    """Under `shared`, a call no compiled kernel fits (in threads: a spurious guard failure;
    here: a width not warmed up) runs the same step eagerly and compiles nothing."""
    w_in, w_out = weights(VOCAB, DIM, "cpu")
    kernel = CompiledKernel(SgdKernel(w_in.clone(), w_out.clone(), "skipgram", 1, 4), 128)
    eager = SgdKernel(w_in.clone(), w_out.clone(), "skipgram", 1, 4)
    kernel.warm_up([2], negative=5)
    code = kernel.compiled._torchdynamo_orig_callable.__code__
    entries = len(torch._C._dynamo.eval_frame._debug_get_cache_entry_list(code))
    batch, negs = next(
        b for b in batches(2000, VOCAB, 3, 128, 8, "cpu") if b[0].context.shape[1] == 6
    )
    with kernel.shared([2], negative=5):
        got, want = kernel.step(batch, negs, 0.05), eager.step(batch, negs, 0.05)
    assert len(torch._C._dynamo.eval_frame._debug_get_cache_entry_list(code)) == entries
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kernel.kernel.w_in, eager.w_in, rtol=0, atol=1e-5)
    torch.testing.assert_close(kernel.kernel.w_out, eager.w_out, rtol=0, atol=1e-5)


def test_a_failed_compile_falls_back_to_the_eager_step(capsys, one_thread):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    w_in, w_out = weights(VOCAB, DIM, "cpu")
    eager = SgdKernel(w_in.clone(), w_out.clone(), "cbow", 1, update_cap=4)
    kernel = CompiledKernel(SgdKernel(w_in.clone(), w_out.clone(), "cbow", 1, 4), 128)
    kernel.compiled = torch.compile(
        kernel.compiled._torchdynamo_orig_callable, backend=broken_backend
    )
    for batch, negs in list(batches(1000, VOCAB, 2, 128, seed=5, device="cpu"))[:3]:
        want, got = eager.step(batch, negs, 0.05), kernel.step(batch, negs, 0.05)
        torch.testing.assert_close(got[0], want[0])
    assert kernel.failed
    assert "compiling the CPU step failed, running eagerly" in capsys.readouterr().err
    assert torch.equal(kernel.kernel.w_in, eager.w_in)  # nothing applied twice, nothing lost


def test_the_compiled_step_is_for_cpu_only():
    kernel = SgdKernel(torch.zeros(4, 2, device="meta"), torch.zeros(4, 2, device="meta"),
                       "cbow", 1, None)  # fmt: skip
    with pytest.raises(ValueError, match="for CPU, not meta"):
        CompiledKernel(kernel, 8)
