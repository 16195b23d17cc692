"""DN-DETR's denoising queries (Li et al. 2022): noised ground truth the decoder must restore.

With anchor queries (DAB-DETR) each decoder query is a (content, anchor box) pair. Denoising
adds, in training only, queries built from the batch's targets: `groups` copies of every image's
ground truth, each copy noised independently,

    label  replaced, with probability label_noise, by a uniformly drawn *other* class
           (DN-DETR's "label flipping"; with one class there is no other, so none flips)
    box    cx += u·λ·w/2, cy += u·λ·h/2, w *= 1 + u·λ, h *= 1 + u·λ, each u ~ U(-1, 1) on its
           own, λ = box_noise; then clipped to [0, 1]

content = label_embedding(noised label), anchor = noised box. Every such query already knows its
target, so the loss needs no matching for it (SetCriterion's outputs["dn"]). Images hold
different numbers of objects; each is padded to the batch's largest count `pad`, so the
denoising part has groups·pad queries, laid out group by group:

    query   [group 0: pad slots | group 1: pad slots | ... | num_queries matching queries]

A padding slot has label num_classes (the embedding's extra row) and the anchor DUMMY_ANCHOR,
and no target. The decoder's self-attention mask keeps the answers from leaking: the matching
queries see no denoising query (at inference there are none), and a group sees no other group
(each would copy another's less-noised boxes); a group sees itself and the matching queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from components.config import require

DUMMY_ANCHOR = (0.5, 0.5, 0.5, 0.5)  # padding slots' box: logit 0 in every coordinate


@dataclass
class DenoisingConfig:
    groups: int = 5  # noised copies of the ground truth
    label_noise: float = 0.5  # probability that a label is replaced by another class
    box_noise: float = 0.4  # λ: centre shift up to λ·w/2, λ·h/2; sizes scaled by 1 ± λ
    enabled: bool = True

    def __post_init__(self) -> None:
        ok = isinstance(self.groups, int) and not isinstance(self.groups, bool)
        require(ok and self.groups >= 1, "groups", self.groups, "an int >= 1")
        require(0.0 <= self.label_noise <= 1.0, "label_noise", self.label_noise,
                "a float in [0, 1]")  # fmt: skip
        # λ > 1 could scale a size below zero.
        require(0.0 <= self.box_noise <= 1.0, "box_noise", self.box_noise, "a float in [0, 1]")


@dataclass
class DenoisingQueries:
    """One batch's denoising queries (D = groups·pad of them, T = D + num_queries).

    content    [B, D, d] label embeddings of the noised labels
    anchors    [B, D, 4] noised boxes, cxcywh in [0, 1]
    labels     int64 [B, D] the noised labels (num_classes in padding slots)
    padding    bool [B, D], True = a padding slot (no target); usable as the denoising part
               of the decoder self-attention's key_padding_mask, to keep dummies unseen
    attn_mask  bool [T, T], True = blocked: the decoder self-attention's mask, for the
               sequence [denoising queries, matching queries]
    matches    per image (query_idx int64 [groups·n_i] into the D denoising queries,
               target_idx int64 [groups·n_i]): SetCriterion's outputs["dn"]["targets"]
    """

    content: Tensor
    anchors: Tensor
    labels: Tensor
    padding: Tensor
    attn_mask: Tensor
    matches: list[tuple[Tensor, Tensor]]
    groups: int
    pad: int

    @property
    def size(self) -> int:
        """D, the number of denoising queries per image (ahead of the matching ones)."""
        return self.groups * self.pad


def make_denoising_queries(
    targets: list[dict[str, Tensor]],
    num_classes: int,
    config: DenoisingConfig,
    label_embedding: nn.Embedding,
    num_queries: int,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """Noised copies of `targets` (B dicts {"labels" int64 [n_i], "boxes" [n_i, 4] cxcywh}) as
    queries ahead of `num_queries` matching ones; None when disabled or the batch has no
    target. label_embedding needs num_classes + 1 rows (the last for padding slots). The noise
    is drawn from `generator` (on its device) when given, else from the global RNG."""
    if label_embedding.num_embeddings < num_classes + 1:
        raise ValueError(
            f"label_embedding has {label_embedding.num_embeddings} rows: denoising needs "
            f"num_classes + 1 = {num_classes + 1} (the last labels padding slots)"
        )
    counts = [len(t["labels"]) for t in targets]
    pad = max(counts, default=0)
    if not config.enabled or pad == 0:
        return None
    device = label_embedding.weight.device
    batch, groups = len(targets), config.groups
    dtype = label_embedding.weight.dtype
    labels, boxes, real = _padded_targets(targets, pad, num_classes, device, dtype)  # [B, pad]

    # One independent draw per (image, group, slot): [B, groups, pad, ...]
    shape = (batch, groups, pad)
    labels = _flip_labels(labels[:, None].expand(shape), num_classes, config.label_noise, generator)
    labels = labels.masked_fill(~real[:, None], num_classes)
    noised = _jitter_boxes(boxes[:, None].expand(*shape, 4), config.box_noise, generator)
    dummy = torch.tensor(DUMMY_ANCHOR, device=device, dtype=noised.dtype)
    anchors = torch.where(real[:, None, :, None], noised, dummy)

    size = groups * pad
    labels = labels.reshape(batch, size)
    return DenoisingQueries(
        content=label_embedding(labels),
        anchors=anchors.reshape(batch, size, 4),
        labels=labels,
        padding=~real[:, None].expand(shape).reshape(batch, size),
        attn_mask=denoising_attn_mask(groups, pad, num_queries, device),
        matches=[_matches(n, groups, pad) for n in counts],
        groups=groups,
        pad=pad,
    )


def denoising_attn_mask(
    groups: int, pad: int, num_queries: int, device: torch.device | None = None
) -> Tensor:
    """bool [groups·pad + num_queries]², True = blocked, over [denoising groups, matching]:
    matching queries see only each other; a denoising group sees itself and the matching ones.

    groups=2, pad=1, num_queries=2 (rows see columns; x = blocked):

        . x . .
        x . . .
        x x . .
        x x . .
    """
    size = groups * pad
    group_of = torch.arange(size, device=device) // pad
    blocked = torch.zeros(size + num_queries, size + num_queries, dtype=torch.bool, device=device)
    blocked[:size, :size] = group_of[:, None] != group_of[None, :]
    blocked[size:, :size] = True
    return blocked


def split_outputs(logits: Tensor, boxes: Tensor, dn: DenoisingQueries) -> tuple[dict, dict]:
    """Decoder outputs over [denoising, matching] queries -> ({"logits", "boxes"} of the
    matching queries, {"logits", "boxes", "targets"} of the denoising ones: SetCriterion's
    outputs["dn"]). logits [..., D + Q, C], boxes [..., D + Q, 4] (leading dims, e.g. decoder
    layers, are kept)."""
    d = dn.size
    matching = {"logits": logits[..., d:, :], "boxes": boxes[..., d:, :]}
    denoising = {"logits": logits[..., :d, :], "boxes": boxes[..., :d, :], "targets": dn.matches}
    return matching, denoising


def _uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) float32 of like's shape on like's device, drawn on the generator's device."""
    device = generator.device if generator is not None else like.device
    return torch.rand(like.shape, generator=generator, device=device).to(like.device)


def _flip_labels(
    labels: Tensor, num_classes: int, probability: float, generator: torch.Generator | None
) -> Tensor:
    """int64 [...] -> [...]: each label, with `probability`, becomes one of the other classes
    (uniformly); with a single class there is no other, so labels stay."""
    flip = _uniform(labels, generator) < probability
    if num_classes == 1:
        return labels
    # label + a shift in [1, K): a uniform draw among the K - 1 other classes
    shift = (_uniform(labels, generator) * (num_classes - 1)).long()
    shift = shift.clamp_max(num_classes - 2) + 1
    return torch.where(flip, (labels + shift) % num_classes, labels)


def _jitter_boxes(boxes: Tensor, box_noise: float, generator: torch.Generator | None) -> Tensor:
    """cxcywh [..., 4] -> [..., 4]: centre shifted by up to box_noise·(w, h)/2, sizes scaled
    by a factor in [1 - box_noise, 1 + box_noise], each coordinate drawn on its own; then
    clipped to [0, 1], which moves a coordinate only towards its original (itself in [0, 1]),
    so those bounds still hold."""
    wh = boxes[..., 2:]
    largest = torch.cat([wh / 2, wh], dim=-1) * box_noise  # largest change of cx, cy, w, h
    u = (2 * _uniform(boxes, generator) - 1).to(boxes.dtype)  # U(-1, 1)
    return (boxes + u * largest).clamp(0.0, 1.0)


def _padded_targets(
    targets: list[dict[str, Tensor]],
    pad: int,
    num_classes: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """(labels int64 [B, pad], boxes [B, pad, 4], real bool [B, pad]): each image's targets
    first, then padding (label num_classes, box DUMMY_ANCHOR, real False)."""
    batch = len(targets)
    labels = torch.full((batch, pad), num_classes, dtype=torch.int64, device=device)
    boxes = torch.tensor(DUMMY_ANCHOR, device=device, dtype=dtype).repeat(batch, pad, 1)
    real = torch.zeros(batch, pad, dtype=torch.bool, device=device)
    for i, target in enumerate(targets):
        n = len(target["labels"])
        labels[i, :n] = target["labels"].to(device)
        boxes[i, :n] = target["boxes"].to(device, boxes.dtype)
        real[i, :n] = True
    return labels, boxes, real


def _matches(n: int, groups: int, pad: int) -> tuple[Tensor, Tensor]:
    """(query_idx, target_idx), int64 [groups·n] each: target j sits at g·pad + j in group g."""
    targets = torch.arange(n).repeat(groups)
    queries = targets + torch.arange(groups).repeat_interleave(n) * pad
    return queries, targets
