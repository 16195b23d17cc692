"""Deterministic, resumable batching: which samples each rank sees at every step.

Epoch e visits the dataset in the order `permutation(seed, e)` (identity without shuffle),
cut into global batches of `batch_size`; the last partial batch is dropped, so every step
sees exactly `batch_size` samples. A global batch is cut into `grad_accum` micro-batches and
each micro-batch into `world_size` contiguous rank slices. Example, 8 samples, batch_size 4,
grad_accum 2, world_size 2, epoch order [5 2 7 0 3 6 1 4]:

    step 0: micro-batch [5 2] -> rank 0 [5], rank 1 [2]; micro-batch [7 0] -> [7], [0]
    step 1: micro-batch [3 6] -> [3], [6];                micro-batch [1 4] -> [1], [4]

Since the loss of each slice is a mean, the mean of the rank and micro-batch gradients is
the gradient of the whole batch: any (grad_accum, world_size) trains like one big batch.
The position (epoch, batches already taken in it) fixes everything that follows, which is
what a checkpoint stores to resume with the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class Position:
    epoch: int = 0
    index: int = 0  # global batches already taken in this epoch


@dataclass(frozen=True)
class BatchPlan:
    size: int  # samples in the dataset
    batch_size: int  # global
    grad_accum: int = 1
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self) -> None:
        parts = self.grad_accum * self.world_size
        if self.batch_size % parts:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of "
                f"grad_accum * world_size = {parts}"
            )
        if self.size < self.batch_size:
            raise ValueError(f"dataset of {self.size} samples < batch_size {self.batch_size}")

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """int64[size]: the epoch's sample order, from (seed, epoch) alone."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def micro_batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """This rank's micro-batches of `epoch` from global batch `start` on, in step order."""
        order = self.order(epoch)
        micro = self.batch_size // self.grad_accum
        part = micro // self.world_size
        for b in range(start, self.batches_per_epoch):
            for m in range(self.grad_accum):
                lo = b * self.batch_size + m * micro + self.rank * part
                yield order[lo : lo + part].tolist()


class Batches:
    """Endless stream of this rank's steps (lists of `grad_accum` micro-batches).

    `position` is where the next step starts; setting it before the first `next_step`
    resumes there. Batches come from a DataLoader (workers, pinning) per epoch; it draws its
    worker seeds from its own generator, seeded by (seed, epoch, rank), never the global RNG.
    """

    def __init__(
        self,
        dataset: Dataset,
        plan: BatchPlan,
        collate: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        self.dataset, self.plan, self.collate = dataset, plan, collate
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._position = Position()
        self._loader: Iterator[Any] | None = None

    @property
    def position(self) -> Position:
        return self._position

    @position.setter
    def position(self, at: Position) -> None:
        self._position, self._loader = at, None

    def next_step(self) -> list[Any]:
        """The micro-batches of the step at `position`; advances `position` by one step."""
        if self._loader is None:
            self._loader = self._open(self.position)
        step = [next(self._loader) for _ in range(self.plan.grad_accum)]
        epoch, index = self._position.epoch, self._position.index + 1
        if index == self.plan.batches_per_epoch:
            self.position = Position(epoch + 1, 0)  # the next epoch opens a new loader
        else:
            self._position = Position(epoch, index)
        return step

    def _open(self, at: Position) -> Iterator[Any]:
        seed = np.random.default_rng([self.plan.seed, at.epoch, self.plan.rank]).integers(2**62)
        generator = torch.Generator().manual_seed(int(seed))
        loader = DataLoader(
            self.dataset,
            batch_sampler=list(self.plan.micro_batches(at.epoch, at.index)),
            collate_fn=self.collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
        )
        return iter(loader)
