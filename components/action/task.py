"""The action detectors' training Task: samples cut from the feature streams.

recurrent  chunks of `chunk` frames (stride chunk / 2) of every stream: features [L, D]
           and labels [L]; loss = cross-entropy over the frames after `burn_in`
oadtr      one sample per frame t of every stream: its window [T, D] with padding [T]
           (frames before the stream's start), its label and the labels of t+1..t+ℓ
           (IGNORE past the stream's end); loss = CE(current) + λ · CE(future frames)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from components.action.models import OadTR, RecurrentDetector
from components.action.streaming import windows
from components.action.train_config import TrainActionConfig

IGNORE = -100  # a future frame past the stream's end: no target


class Chunks(Dataset):
    """Fixed-length chunks of each stream (the last one flush with the stream's end)."""

    def __init__(self, streams: Sequence[tuple[Tensor, Tensor]], length: int):
        self.streams, self.length = list(streams), length
        self.index: list[tuple[int, int]] = []
        for s, (features, _) in enumerate(self.streams):
            n = len(features)
            if n < length:
                raise ValueError(f"stream {s}: {n} frames, shorter than a chunk of {length}")
            starts = list(range(0, n - length + 1, max(1, length // 2)))
            if starts[-1] != n - length:
                starts.append(n - length)
            self.index += [(s, start) for start in starts]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s, start = self.index[i]
        features, labels = self.streams[s]
        return features[start : start + self.length], labels[start : start + self.length]


class Windows(Dataset):
    """Every frame of every stream as an OadTR sample (module doc)."""

    def __init__(self, streams: Sequence[tuple[Tensor, Tensor]], window: int, future: int):
        self.window, self.future = window, future
        self.parts = []
        for features, labels in streams:
            stacked, padding = windows(features, window)
            ahead = torch.full((len(labels), future), IGNORE, dtype=torch.int64)
            for j in range(1, future + 1):
                ahead[: len(labels) - j, j - 1] = labels[j:]
            self.parts.append((stacked, padding, labels, ahead))
        self.index = [(p, t) for p, part in enumerate(self.parts) for t in range(len(part[2]))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p, t = self.index[i]
        stacked, padding, labels, ahead = self.parts[p]
        return stacked[t], padding[t], labels[t], ahead[t]


class ActionTask:
    def __init__(
        self,
        config: TrainActionConfig,
        input_dim: int,
        num_classes: int,
        train: Sequence[tuple[Tensor, Tensor]],
        val: Sequence[tuple[Tensor, Tensor]],
    ):
        """train, val: (features [N, D], labels [N]) per stream."""
        self.config, self.input_dim, self.num_classes = config, input_dim, num_classes
        self.train_data: Dataset = self._samples(train)
        self.val_data: Dataset | None = self._samples(val) if val else None

    def _samples(self, streams: Sequence[tuple[Tensor, Tensor]]) -> Dataset:
        c = self.config
        if c.model == "recurrent":
            return Chunks(streams, c.chunk)
        return Windows(streams, c.oadtr.window, c.oadtr.future)

    def model(self) -> nn.Module:
        c = self.config
        if c.model == "recurrent":
            return RecurrentDetector(c.recurrent, self.input_dim, self.num_classes)
        return OadTR(c.oadtr, self.input_dim, self.num_classes)

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        if isinstance(model, RecurrentDetector):
            features, labels = batch
            logits, _ = model(features)
            kept = slice(self.config.burn_in, None)
            logits, labels = logits[:, kept], labels[:, kept]
            loss = F.cross_entropy(logits.reshape(-1, self.num_classes), labels.reshape(-1))
            accuracy = (logits.argmax(-1) == labels).float().mean()
            return loss, {"accuracy": accuracy.detach()}
        window, padding, labels, ahead = batch
        current, future = model(window, padding)
        loss = F.cross_entropy(current, labels)
        metrics: dict[str, float | Tensor] = {
            "current_loss": loss.detach(),
            "accuracy": (current.argmax(-1) == labels).float().mean().detach(),
        }
        if future is not None and (ahead != IGNORE).any():
            future_loss = F.cross_entropy(
                future.reshape(-1, self.num_classes), ahead.reshape(-1), ignore_index=IGNORE
            )
            loss = loss + self.config.oadtr.future_weight * future_loss
            metrics["future_loss"] = future_loss.detach()
        return loss, metrics
