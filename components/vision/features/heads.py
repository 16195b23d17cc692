"""What the feature network's heads predict, and how a caption says what they should.

Two kinds of data, two head sets (`heads_for`):

    digits (labels)   "class": one of the classes (softmax), from an image's first label
    shapes (captions) "shape", "colour", "size": which of SHAPES / COLOURS / SIZES occur in the
                      image (one sigmoid each: an image with a red circle and a blue square has
                      shape {circle, square}, colour {red, blue}); "count": how many objects
                      (softmax over 1..max), all read from the caption's grammar

An image's `Attributes` is {head: frozenset of names}; a prompt's are its caption's, so
"what the image shows matches the prompt" is `attributes == expected`, head by head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from components.vision.data.shapes import COLOURS, SHAPES, SIZES, parse_caption

Attributes = dict[str, frozenset[str]]  # head -> the names it predicts present
THRESHOLD = 0.5  # a multi-label head's output counts as present above this probability


@dataclass(frozen=True)
class Head:
    name: str
    names: tuple[str, ...]  # output i means names[i]
    multi_label: bool  # sigmoid per output (which are present) | softmax (exactly one)

    def to_json(self) -> dict:
        return {"name": self.name, "names": list(self.names), "multi_label": self.multi_label}

    @classmethod
    def from_json(cls, data: Mapping) -> Head:
        return cls(
            str(data["name"]), tuple(str(n) for n in data["names"]), bool(data["multi_label"])
        )


def heads_for(source: str, classes: Sequence[str], max_objects: int) -> tuple[Head, ...]:
    """The heads for images of `source` ("shapes": attribute heads with a count head over
    1..max_objects; anything else: one class head over `classes`)."""
    if source == "shapes":
        counts = tuple(str(n) for n in range(1, max_objects + 1))
        return (
            Head("shape", SHAPES, True),
            Head("colour", COLOURS, True),
            Head("size", SIZES, True),
            Head("count", counts, False),
        )
    if not classes:
        raise ValueError(f"images of source {source!r} without classes: no head to train")
    return (Head("class", tuple(classes), False),)


def expected(heads: Sequence[Head], caption: str, labels: Sequence[int] = ()) -> Attributes:
    """What an image of `caption` (and `labels`) shows, per head. ValueError naming the
    caption when the heads cannot read it (a shapes caption outside the grammar, a class
    head without a label or a caption naming no class)."""
    names = [h.name for h in heads]
    if names == ["class"]:
        classes = heads[0].names
        if labels:
            return {"class": frozenset({classes[labels[0]]})}
        named = [c for c in classes if c in caption.lower().split()]
        if len(named) != 1:
            raise ValueError(f"caption {caption!r} names {len(named)} of the classes {classes}")
        return {"class": frozenset(named)}
    parsed = parse_caption(caption)
    objects = parsed.objects
    return {
        "shape": frozenset(o.shape for o in objects),
        "colour": frozenset(o.colour for o in objects),
        "size": frozenset(o.size for o in objects),
        "count": frozenset({str(len(objects))}),
    }


def targets(heads: Sequence[Head], attributes: Sequence[Attributes]) -> dict[str, Tensor]:
    """Training targets per head: float multi-hot [N, K] (multi-label) or class ids int64 [N].
    ValueError for a name a head does not have (e.g. more objects than the count head has)."""
    out: dict[str, Tensor] = {}
    for head in heads:
        index = {name: i for i, name in enumerate(head.names)}
        rows = []
        for attrs in attributes:
            unknown = sorted(attrs[head.name] - index.keys())
            if unknown:
                raise ValueError(f"head {head.name!r} has no output {unknown} ({head.names})")
            rows.append([index[name] for name in attrs[head.name]])
        if head.multi_label:
            hot = torch.zeros(len(rows), len(head.names))
            for i, ids in enumerate(rows):
                hot[i, ids] = 1.0
            out[head.name] = hot
        else:
            out[head.name] = torch.as_tensor([ids[0] for ids in rows], dtype=torch.int64)
    return out


def decode(heads: Sequence[Head], logits: Mapping[str, Tensor]) -> list[Attributes]:
    """Predicted attributes per image from the heads' logits [N, K] each."""
    per_head: dict[str, list[frozenset[str]]] = {}
    for head in heads:
        scores = logits[head.name].float()
        if head.multi_label:
            present = torch.sigmoid(scores) > THRESHOLD
            per_head[head.name] = [
                frozenset(head.names[j] for j in row.nonzero().flatten().tolist())
                for row in present
            ]
        else:
            per_head[head.name] = [frozenset({head.names[j]}) for j in scores.argmax(1).tolist()]
    count = len(next(iter(per_head.values()))) if per_head else 0
    return [{name: values[i] for name, values in per_head.items()} for i in range(count)]


def agreement(predicted: Sequence[Attributes], wanted: Sequence[Attributes]) -> dict[str, float]:
    """Per head, the fraction of images whose prediction equals what was wanted, and "all":
    the fraction right on every head (prompt accuracy)."""
    if len(predicted) != len(wanted) or not wanted:
        raise ValueError(f"{len(predicted)} predictions for {len(wanted)} expectations")
    heads = list(wanted[0])
    out = {
        head: sum(p[head] == w[head] for p, w in zip(predicted, wanted, strict=True)) / len(wanted)
        for head in heads
    }
    out["all"] = sum(p == w for p, w in zip(predicted, wanted, strict=True)) / len(wanted)
    return out
