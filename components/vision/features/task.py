"""The feature network's training Task: every head's loss summed, accuracy per head logged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from components.vision.features.config import FeatureNetConfig
from components.vision.features.heads import THRESHOLD, Head
from components.vision.features.model import FeatureNetwork, shifted, to_input

Batch = tuple[Tensor, dict[str, Tensor]]  # uint8 images [B, H, W, C], targets per head


class LabelledImages(Dataset):
    """uint8 images [N, H, W, C] and per head their targets (`heads.targets`)."""

    def __init__(self, images: Tensor, targets: Mapping[str, Tensor]):
        self.images, self.targets = images, dict(targets)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[index], {name: t[index] for name, t in self.targets.items()}


def head_losses(
    heads: Sequence[Head], logits: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Per head: BCE with logits summed over its outputs (multi-label) or cross-entropy, each
    a mean over the batch."""
    losses = {}
    for head in heads:
        out, target = logits[head.name].float(), targets[head.name]
        if head.multi_label:
            # summed over the head's outputs (each a yes/no question), as a softmax head's
            # cross-entropy is one question: a mean would weigh a 7-way head 7 times less
            bce = nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none")
            losses[head.name] = bce.sum(dim=1).mean()
        else:
            losses[head.name] = nn.functional.cross_entropy(out, target)
    return losses


def head_accuracy(
    heads: Sequence[Head], logits: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Per head the share of images predicted exactly right (the whole set, for a
    multi-label head), and "all": right on every head."""
    right = {}
    for head in heads:
        out, target = logits[head.name], targets[head.name]
        if head.multi_label:
            right[head.name] = ((torch.sigmoid(out) > THRESHOLD) == (target > 0.5)).all(dim=1)
        else:
            right[head.name] = out.argmax(dim=1) == target
    every = torch.stack(list(right.values())).all(dim=0)
    return {f"accuracy/{k}": v.float().mean() for k, v in right.items()} | {
        "accuracy": every.float().mean()
    }


class FeatureTask:
    def __init__(
        self,
        config: FeatureNetConfig,
        heads: Sequence[Head],
        channels: int,
        size: int,
        train: LabelledImages,
        val: LabelledImages | None,
    ):
        self.config, self.heads = config, tuple(heads)
        self.channels, self.size = channels, size
        self.train_data: Dataset = train
        self.val_data: Dataset | None = val if val is not None and len(val) else None

    def model(self) -> FeatureNetwork:
        return FeatureNetwork(self.config.network, self.channels, self.size, self.heads)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        images, targets = batch
        x = to_input(images)
        if model.training:
            x = shifted(x, self.config.shift)
        _, logits = model(x)
        losses = head_losses(self.heads, logits, targets)
        with torch.no_grad():
            metrics = head_accuracy(self.heads, logits, targets)
        metrics |= {f"loss/{name}": value.detach() for name, value in losses.items()}
        return torch.stack(list(losses.values())).sum(), metrics
