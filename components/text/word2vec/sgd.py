"""Batched negative-sampling SGD for word2vec (skip-gram and CBOW), in plain torch.

word2vec.c updates one (center, context) pair at a time. Here a batch of centers is one
set of gathers, batched matrix products and `index_add_` scatters, with gradients written
by hand (no autograd). Skip-gram shares each center's negatives across its context words
(the minibatching of Ji et al. 2016, used by BlazingText): per center, the context rows
[2W, D] against the center + negative rows [1+K, D] are one small matrix product.

Parallel yet deterministic: a batch is split into shards whose gradients are computed by
worker threads from the same weights; then one thread applies every shard's input-matrix
updates and another every output-matrix update, always in shard order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F

from components.text.word2vec.data import Windows, gather


@dataclass
class Gradients:
    """Row updates of one shard, already scaled by the learning rate.

    in_rows [n] / in_delta [n, D]: updates of the input (word) matrix
    out_rows [m] / out_delta [m, D]: updates of the output (context) matrix
    loss: summed negative log-likelihood over `pairs` (center, context) examples; both 0-dim
    """

    in_rows: torch.Tensor
    in_delta: torch.Tensor
    out_rows: torch.Tensor
    out_delta: torch.Tensor
    loss: torch.Tensor
    pairs: torch.Tensor


def output_targets(
    centers: torch.Tensor, negs: torch.Tensor, has_context: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Output rows [B, 1+K] (center first), labels [B, 1+K], and which rows count: a negative
    equal to the center is skipped, as in word2vec.c; with `has_context` [B], rows of centers
    without context count nowhere."""
    targets = torch.cat([centers[:, None], negs], dim=1)
    labels = torch.zeros(targets.shape, dtype=torch.float32, device=centers.device)
    labels[:, 0] = 1.0
    valid = targets != centers[:, None]
    valid[:, 0] = True
    if has_context is not None:
        valid &= has_context[:, None]
    return targets, labels, valid


def negative_log_likelihood(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Summed -log sigmoid(+-logit) over the weighted slots (labels broadcast to logits)."""
    signed = torch.where(labels > 0, logits, -logits)
    return -(F.logsigmoid(signed) * weight).sum()


def skipgram_gradients(
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
    """Skip-gram step: each context word's input vector predicts the center (and not the
    negatives) through the output matrix, as word2vec.c's `-cbow 0`.

    centers [B], context [B, 2W], mask [B, 2W] bool, negs [B, K]; w_in, w_out [V, D];
    scale_in, scale_out [V]: per-row factors of this batch's updates (see `row_scales`).
    """
    targets, labels, valid = output_targets(centers, negs)
    x = gather(w_in, context)  # [B, 2r, D]
    y = gather(w_out, targets)  # [B, 1+K, D]
    logits = torch.bmm(x, y.transpose(1, 2))  # [B, 2r, 1+K]
    weight = (mask[:, :, None] & valid[:, None, :]).to(logits.dtype)
    g = (labels[:, None, :] - torch.sigmoid(logits)) * weight * alpha  # 0 at masked slots
    in_delta = torch.bmm(g * gather(scale_in, context)[:, :, None], y)  # [B, 2r, D]
    g_out = g * gather(scale_out, targets)[:, None, :]
    out_delta = torch.bmm(g_out.transpose(1, 2), x)  # [B, 1+K, D]
    loss = negative_log_likelihood(logits, labels[:, None, :], weight)
    dim = x.shape[-1]
    return Gradients(
        context.reshape(-1), in_delta.reshape(-1, dim), targets.reshape(-1),
        out_delta.reshape(-1, dim), loss, mask.sum(),
    )  # fmt: skip


def cbow_gradients(
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
    """CBOW step: the mean of the context input vectors predicts the center; every context
    word receives the full hidden-layer error (word2vec.c `-cbow 1`, gensim `cbow_mean=1`).

    Same shapes as `skipgram_gradients`; centers without any context word change nothing.
    """
    counts = mask.sum(dim=1, keepdim=True)  # [B, 1]
    has_context = counts[:, 0] > 0
    share = mask / counts.clamp(min=1)  # [B, 2r]: the mean over the slots in the window
    h = F.embedding_bag(context, w_in, mode="sum", per_sample_weights=share)  # [B, D]
    targets, labels, valid = output_targets(centers, negs, has_context)
    y = gather(w_out, targets)  # [B, 1+K, D]
    logits = (y * h[:, None, :]).sum(-1)  # [B, 1+K]; ~4x faster than B matrix-vector bmm
    weight = valid.to(logits.dtype)
    g = (labels - torch.sigmoid(logits)) * weight * alpha
    dh = torch.bmm(g[:, None, :], y)[:, 0]  # [B, D]
    out_delta = (g * gather(scale_out, targets))[:, :, None] * h[:, None, :]  # [B, 1+K, D]
    loss = negative_log_likelihood(logits, labels, weight)
    in_delta = dh[:, None, :] * (mask * gather(scale_in, context))[:, :, None]  # [B, 2r, D]
    dim = h.shape[-1]
    return Gradients(
        context.reshape(-1), in_delta.reshape(-1, dim), targets.reshape(-1),
        out_delta.reshape(-1, dim), loss, has_context.sum(),
    )  # fmt: skip


def row_scales(
    batch: Windows, negs: torch.Tensor, mode: str, vocab_size: int, cap: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row factors min(1, cap / n) for the input and output matrices, n being how many
    examples of the batch update that row. Sequential SGD recomputes the gradient after each
    example; a batch sums them from the same weights, which overshoots on the few most
    frequent units (a batch of 1024 centers updates the output row of "the" ~600 times).
    Capping those rows keeps batched SGD stable; rows of ordinary units are untouched.
    float32 [V] each on the batch's device (all ones when `cap` is None); no host sync."""
    device = batch.centers.device
    ones = torch.ones(vocab_size, device=device)
    if cap is None:
        return ones, ones
    mask = batch.mask.float()
    per_center = mask.sum(dim=1)
    n_in = torch.zeros(vocab_size, device=device).index_add_(
        0, batch.context.reshape(-1), mask.reshape(-1)
    )
    has_context = per_center > 0 if mode == "cbow" else None
    targets, _, valid = output_targets(batch.centers, negs, has_context)
    weights = valid.float()
    if mode == "skipgram":  # every context word of the center is one example per target
        weights = weights * per_center[:, None]
    n_out = torch.zeros(vocab_size, device=device).index_add_(
        0, targets.reshape(-1), weights.reshape(-1)
    )
    scale_in = (cap / n_in.clamp(min=1)).clamp(max=1.0)
    scale_out = (cap / n_out.clamp(min=1)).clamp(max=1.0)
    return scale_in, scale_out


GRADIENTS: dict[str, Callable[..., Gradients]] = {
    "skipgram": skipgram_gradients,
    "cbow": cbow_gradients,
}


class SgdKernel:
    """Applies batches to the two matrices, sharded over `workers` threads on CPU."""

    def __init__(
        self,
        w_in: torch.Tensor,
        w_out: torch.Tensor,
        mode: str,
        workers: int,
        update_cap: int | None,
    ):
        self.w_in, self.w_out = w_in, w_out
        self.gradients = GRADIENTS[mode]
        self.mode, self.update_cap = mode, update_cap
        self.device = w_in.device
        self.workers = workers if self.device.type == "cpu" else 1
        # Each thread runs its ops single-threaded: OpenMP teams on 2 shared cores stall.
        self.pool = ThreadPoolExecutor(
            max(self.workers, 2), initializer=torch.set_num_threads, initargs=(1,)
        )

    def close(self) -> None:
        self.pool.shutdown()

    def step(
        self, batch: Windows, negs: torch.Tensor, alpha: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update from `batch` with negatives [B, K] (on the matrices' device); returns
        (summed loss, examples) as 0-dim tensors, so a GPU step never waits for the host."""
        scales = row_scales(batch, negs, self.mode, len(self.w_in), self.update_cap)
        tensors = [batch.centers, batch.context, batch.mask, negs]
        shards = list(zip(*(t.tensor_split(self.workers) for t in tensors), strict=True))
        shards = [s for s in shards if len(s[0])]
        if not shards:
            zero = torch.zeros((), device=self.device)
            return zero, zero
        if len(shards) == 1:
            grads = [self.gradients(self.w_in, self.w_out, *shards[0], alpha, *scales)]
        else:
            jobs = [
                self.pool.submit(self.gradients, self.w_in, self.w_out, *s, alpha, *scales)
                for s in shards
            ]
            grads = [job.result() for job in jobs]
        self._apply(grads)
        # tensors: `grads` is not empty
        loss, pairs = sum(g.loss for g in grads), sum(g.pairs for g in grads)
        return cast(torch.Tensor, loss), cast(torch.Tensor, pairs)

    def _apply(self, grads: list[Gradients]) -> None:
        def apply_in() -> None:
            for g in grads:
                self.w_in.index_add_(0, g.in_rows, g.in_delta)

        def apply_out() -> None:
            for g in grads:
                self.w_out.index_add_(0, g.out_rows, g.out_delta)

        if len(grads) == 1:
            apply_in()
            apply_out()
            return
        jobs = [self.pool.submit(apply_in), self.pool.submit(apply_out)]
        for job in jobs:
            job.result()
