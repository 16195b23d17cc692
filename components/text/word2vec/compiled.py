"""word2vec's batch step compiled for CPU by `torch.compile` (TorchInductor's C++ backend).

The eager step (`sgd`) materialises every intermediate — gathered rows, batched-product
outputs, per-slot updates — and on CPU that memory traffic, not the arithmetic, bounds it. Here
the same step is written as broadcasts and sums, which Inductor fuses into one C++ loop nest per
context width: rows are read where they are used and nothing of size [B, 2r, 1+K, D] exists.
The row scales and both scatters are in the same compiled function.

Shapes are static (a compiled kernel per context width, at the fixed batch size; a short batch
is padded with empty windows, which change nothing, as in `graphs`), except the vocabulary
size, so one set of kernels serves every corpus and is reused from Inductor's on-disk cache.
Kernels run single-threaded (the trainer sets one torch thread), so their scatters add in a
fixed order and training stays deterministic; for speed on several cores, hogwild threads
(`Word2VecConfig.hogwild`) share one compiled kernel and run whole steps at once. Results
equal the eager step's up to float rounding; `Word2VecConfig.training_digest` keeps the two
apart for resuming.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from components.text.word2vec.data import Windows
from components.text.word2vec.sgd import (
    Gradients,
    SgdKernel,
    negative_log_likelihood,
    output_targets,
    row_scales,
)

_OPTIONS: dict[str, Any] = {
    # Inductor unrolls a reduction only up to this many terms; beyond, it vectorises across the
    # reduced axis (the 2r context slots) and gathers each of the D columns separately, ~6x
    # slower. Windows have at most 2 * window slots.
    "unroll_reductions_threshold": 64,
    # The C++ wrapper releases the GIL while the kernel runs (the default Python binding holds
    # it), so hogwild threads run their steps at once.
    "cpp_wrapper": True,
    # Inductor checks each gathered row's index against the table size: ~7 % of a CBOW step.
    # Every index here is a vocabulary row by construction (chunk ids, checked once per chunk
    # by the trainer, and alias-table draws), so the compiled step goes without.
    "assert_indirect_indexing": False,
}
# Kernels per process: one per (mode, width, batch size, dim, ...); Dynamo's default of 8 would
# fail both modes of one process. Beyond this, the step runs eagerly.
_MAX_KERNELS = 64
_COMPILE_FAILED = (
    torch._dynamo.exc.TorchDynamoException,
    torch._dynamo.exc.FailOnRecompileLimitHit,
)


def fused_skipgram_gradients(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    centers: torch.Tensor,
    context: torch.Tensor,
    mask: torch.Tensor,
    negs: torch.Tensor,
    alpha: torch.Tensor | float,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
) -> Gradients:
    """`sgd.skipgram_gradients` as broadcasts and sums (same arguments and result)."""
    targets, labels, valid = output_targets(centers, negs)
    x = w_in[context]  # [B, 2r, D]
    y = w_out[targets]  # [B, 1+K, D]
    logits = (x[:, :, None, :] * y[:, None, :, :]).sum(-1)  # [B, 2r, 1+K]
    weight = (mask[:, :, None] & valid[:, None, :]).to(logits.dtype)
    g = (labels[:, None, :] - torch.sigmoid(logits)) * weight * alpha
    in_delta = (g[..., None] * y[:, None, :, :]).sum(2) * scale_in[context][..., None]
    out_delta = (g[..., None] * x[:, :, None, :]).sum(1) * scale_out[targets][..., None]
    loss = negative_log_likelihood(logits, labels[:, None, :], weight)
    return Gradients(
        context.reshape(-1), in_delta.flatten(0, 1), targets.reshape(-1), out_delta.flatten(0, 1),
        loss, mask.sum(),
    )  # fmt: skip


def fused_cbow_gradients(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    centers: torch.Tensor,
    context: torch.Tensor,
    mask: torch.Tensor,
    negs: torch.Tensor,
    alpha: torch.Tensor | float,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
) -> Gradients:
    """`sgd.cbow_gradients` as broadcasts and sums (same arguments and result)."""
    counts = mask.sum(dim=1, keepdim=True)
    has_context = counts[:, 0] > 0
    share = mask / counts.clamp(min=1)  # [B, 2r]
    h = (w_in[context] * share[..., None]).sum(1)  # [B, D]
    targets, labels, valid = output_targets(centers, negs, has_context)
    y = w_out[targets]  # [B, 1+K, D]
    logits = (y * h[:, None, :]).sum(-1)  # [B, 1+K]
    weight = valid.to(logits.dtype)
    g = (labels - torch.sigmoid(logits)) * weight * alpha
    dh = (g[..., None] * y).sum(1)  # [B, D]
    out_delta = (g * scale_out[targets])[..., None] * h[:, None, :]
    in_delta = dh[:, None, :] * (mask * scale_in[context])[..., None]
    loss = negative_log_likelihood(logits, labels, weight)
    return Gradients(
        context.reshape(-1), in_delta.flatten(0, 1), targets.reshape(-1), out_delta.flatten(0, 1),
        loss, has_context.sum(),
    )  # fmt: skip


FUSED = {"skipgram": fused_skipgram_gradients, "cbow": fused_cbow_gradients}


def _make_step(mode: str, update_cap: int | None):
    gradients = FUSED[mode]

    def step(w_in, w_out, centers, context, mask, negs, alpha):
        batch = Windows(centers, context, mask)
        scales = row_scales(batch, negs, mode, w_in.shape[0], update_cap)
        g = gradients(w_in, w_out, centers, context, mask, negs, alpha, *scales)
        w_in.index_add_(0, g.in_rows, g.in_delta)
        w_out.index_add_(0, g.out_rows, g.out_delta)
        return g.loss, g.pairs

    return step


class CompiledKernel:
    """`SgdKernel.step` through `torch.compile` on CPU, batches padded to `batch_size`; falls
    back to the eager step for a larger batch, or for good when compiling fails (no C++
    compiler, say). Indices must be rows of the matrices: the compiled step does not check."""

    def __init__(self, kernel: SgdKernel, batch_size: int):
        if kernel.device.type != "cpu":
            raise ValueError(f"the compiled step is for CPU, not {kernel.device}")
        self.kernel, self.batch_size = kernel, batch_size
        for table in (kernel.w_in, kernel.w_out):
            torch._dynamo.mark_dynamic(table, 0)  # vocabulary size: any corpus, same kernels
        step = _make_step(kernel.mode, kernel.update_cap)
        self.compiled = torch.compile(step, fullgraph=True, dynamic=False, options=_OPTIONS)
        self.failed = False
        self.widths: set[int] = set()  # context widths compiled for

    def step(
        self, batch: Windows, negs: torch.Tensor, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.failed or len(batch) > self.batch_size:
            return self.kernel.step(batch, negs, alpha)
        pad = self.batch_size - len(batch)
        tensors = [batch.centers, batch.context, batch.mask, negs]
        if pad:  # empty windows: mask False, so they weigh nothing anywhere
            tensors = [F.pad(t, (0, 0) * (t.dim() - 1) + (0, pad)) for t in tensors]
        # alpha as a tensor, so a new learning rate is not a new graph; one per call, so that
        # hogwild threads can share this kernel
        call = (self.kernel.w_in, self.kernel.w_out, *tensors, torch.tensor(alpha))
        width = batch.context.shape[1]
        try:
            if width in self.widths:  # compiled already: no config patch on the hot path
                return self.compiled(*call)
            with torch._dynamo.config.patch(recompile_limit=_MAX_KERNELS):
                result = self.compiled(*call)
        except _COMPILE_FAILED as error:  # raised before anything ran
            print(f"word2vec: compiling the CPU step failed, running eagerly: {error}",
                  file=sys.stderr)  # fmt: skip
            self.failed = True
            return self.kernel.step(batch, negs, alpha)
        self.widths.add(width)
        return result

    def warm_up(self, widths: Iterable[int], negative: int) -> None:
        """Compiles the step for every context width now (batches of empty windows, which
        change nothing)."""
        for width in widths:
            if self.failed:
                return
            empty = Windows(
                torch.zeros(0, dtype=torch.long), torch.zeros(0, width, dtype=torch.long),
                torch.zeros(0, width, dtype=torch.bool),
            )  # fmt: skip
            self.step(empty, torch.zeros(0, negative, dtype=torch.long), 0.0)

    @contextmanager
    def shared(self, widths: Iterable[int], negative: int) -> Iterator[None]:
        """While threads share this kernel: compiles every context width on entry (`warm_up`),
        then keeps Dynamo from compiling again. Its guard checks are not thread-safe
        (pytorch#123177): under concurrent calls a check now and then fails for no reason, and
        Dynamo would compile the step again, stalling every thread for ~1 s (and after a few,
        hit its recompile limit). Every width is compiled already, so a miss can only be such
        a one: that step runs eagerly instead, the same arithmetic."""
        self.warm_up(widths, negative)
        with torch.compiler.set_stance("eager_on_recompile"):
            yield

    def close(self) -> None:
        self.kernel.close()
