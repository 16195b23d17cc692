"""CUDA graphs for word2vec's batch step.

One `SgdKernel.step` launches some sixty small kernels. On a GPU, at the batch sizes that keep
SGD's quality (a few thousand centers), launching them, not the arithmetic, bounds the speed.
Captured once per context width at a fixed batch size, a step becomes one graph launch plus
the copies of its inputs. A shorter batch is padded with empty windows (mask all False): they
weigh nothing in the gradients and count nowhere in the row scales, so the arithmetic is the
eager step's.
"""

from __future__ import annotations

import sys

import torch

from components.text.word2vec.data import Windows
from components.text.word2vec.sgd import SgdKernel


class _CapturedStep:
    """The step for batches of `batch_size` centers with `width` context slots, as a graph
    over static input buffers."""

    def __init__(self, kernel: SgdKernel, batch_size: int, width: int, negative: int):
        device = kernel.device
        self.centers = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.context = torch.zeros(batch_size, width, dtype=torch.int64, device=device)
        self.mask = torch.zeros(batch_size, width, dtype=torch.bool, device=device)
        self.negs = torch.zeros(batch_size, negative, dtype=torch.int64, device=device)
        self.alpha = torch.zeros((), device=device)
        batch = Windows(self.centers, self.context, self.mask)
        # Warm up on a side stream (library handles and workspaces exist before capture); the
        # mask is all False, so this step changes no weight.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            kernel.step(batch, self.negs, self.alpha)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.pairs = kernel.step(batch, self.negs, self.alpha)

    def replay(
        self, batch: Windows, negs: torch.Tensor, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(batch)
        self.centers[:n].copy_(batch.centers)
        self.context[:n].copy_(batch.context)
        self.mask[:n].copy_(batch.mask)
        self.mask[n:] = False
        self.negs[:n].copy_(negs)
        self.alpha.fill_(alpha)
        self.graph.replay()
        return self.loss, self.pairs  # overwritten by the next replay (stream-ordered reads)


class GraphedKernel:
    """`SgdKernel.step` replayed from CUDA graphs, one per context width; falls back to the
    eager step for a batch larger than `batch_size` or when capture fails."""

    def __init__(self, kernel: SgdKernel, batch_size: int, negative: int):
        if kernel.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA kernel, not {kernel.device}")
        self.kernel, self.batch_size, self.negative = kernel, batch_size, negative
        self.captured: dict[int, _CapturedStep] = {}
        self.failed = False

    def step(
        self, batch: Windows, negs: torch.Tensor, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = batch.context.shape[1]
        if len(batch) > self.batch_size or self.failed:
            return self.kernel.step(batch, negs, alpha)
        if width not in self.captured:
            try:
                self.captured[width] = _CapturedStep(
                    self.kernel, self.batch_size, width, self.negative
                )
            except RuntimeError as error:  # e.g. an op that cannot be captured
                print(f"word2vec: CUDA graph capture failed, running eagerly: {error}",
                      file=sys.stderr)  # fmt: skip
                self.failed = True
                return self.kernel.step(batch, negs, alpha)
        return self.captured[width].replay(batch, negs, alpha)

    def close(self) -> None:
        self.captured.clear()
        self.kernel.close()
