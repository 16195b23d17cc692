"""The action detectors' training Task: samples cut from the feature streams.

recurrent  chunks of `chunk` frames (stride chunk / 2) of every stream: features [L, D]
           and labels [L]; loss = cross-entropy over the frames after `burn_in`
causal     (OadTR with causal: true) chunks of `window` frames, with each frame's labels of
           t+1..t+ℓ; loss = CE(current) + λ · CE(future), over the frames after `burn_in`
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

from components.action.causal_oadtr import CausalOadTR
from components.action.models import RecurrentDetector, feature_scale, network
from components.action.standardize import FeatureScale
from components.action.streaming import windows
from components.action.train_config import TrainActionConfig

IGNORE = -100  # a future frame past the stream's end: no target


def ahead_labels(labels: Tensor, future: int) -> Tensor:
    """labels [N] -> [N, future]: row t holds the labels of t+1..t+future (IGNORE past the
    stream's end)."""
    ahead = torch.full((len(labels), future), IGNORE, dtype=torch.int64)
    for j in range(1, future + 1):
        ahead[: len(labels) - j, j - 1] = labels[j:]
    return ahead


class Chunks(Dataset):
    """Fixed-length chunks of each stream (the last one flush with the stream's end):
    (features [L, D], labels [L], future labels [L, future])."""

    def __init__(self, streams: Sequence[tuple[Tensor, Tensor]], length: int, future: int = 0):
        self.length = length
        self.streams = [(f, y, ahead_labels(y, future)) for f, y in streams]
        self.index: list[tuple[int, int]] = []
        for s, (features, _, _) in enumerate(self.streams):
            n = len(features)
            if n < length:
                raise ValueError(f"stream {s}: {n} frames, shorter than a chunk of {length}")
            starts = list(range(0, n - length + 1, max(1, length // 2)))
            if starts[-1] != n - length:
                starts.append(n - length)
            self.index += [(s, start) for start in starts]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        s, start = self.index[i]
        kept = slice(start, start + self.length)
        return tuple(t[kept] for t in self.streams[s])  # type: ignore[return-value]


class Windows(Dataset):
    """Every frame of every stream as an OadTR sample (module doc)."""

    def __init__(self, streams: Sequence[tuple[Tensor, Tensor]], window: int, future: int):
        self.window, self.future = window, future
        self.parts = []
        for features, labels in streams:
            stacked, padding = windows(features, window)
            self.parts.append((stacked, padding, labels, ahead_labels(labels, future)))
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
        self.scale = FeatureScale(input_dim)  # the train frames' statistics, for every model
        if train:
            self.scale.fit(torch.cat([features for features, _ in train]))
        self.train_data: Dataset = self._samples(train)
        self.val_data: Dataset | None = self._samples(val) if val else None

    def _samples(self, streams: Sequence[tuple[Tensor, Tensor]]) -> Dataset:
        c = self.config
        if c.model == "recurrent":
            return Chunks(streams, c.chunk)
        if c.oadtr.causal:
            return Chunks(streams, c.oadtr.window, c.oadtr.future)
        return Windows(streams, c.oadtr.window, c.oadtr.future)

    def model(self) -> nn.Module:
        c = self.config
        section = c.recurrent if c.model == "recurrent" else c.oadtr
        model = network(c.model, section, self.input_dim, self.num_classes)
        feature_scale(model).load_state_dict(self.scale.state_dict())
        return model

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        kept = slice(self.config.burn_in, None)
        if isinstance(model, RecurrentDetector):
            features, labels, _ = batch
            logits, _ = model(features)
            logits, labels = logits[:, kept], labels[:, kept]
            loss = F.cross_entropy(logits.reshape(-1, self.num_classes), labels.reshape(-1))
            accuracy = (logits.argmax(-1) == labels).float().mean()
            return loss, {"accuracy": accuracy.detach()}
        if isinstance(model, CausalOadTR):  # every frame of the chunk after the burn-in
            features, labels, ahead = batch
            current, future = model(features)
            labels, ahead = labels[:, kept].reshape(-1), ahead[:, kept].flatten(0, 1)
            current = current[:, kept].reshape(-1, self.num_classes)
            future = None if future is None else future[:, kept].flatten(0, 1)
        else:
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
