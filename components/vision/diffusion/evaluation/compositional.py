"""GenEval-style scoring of generated images by Loom's own DETR.

A prompt in the shapes grammar asks for objects (shape, colour; sizes are not scored) and,
for two, a relation. A generated image passes when the detector, at score >= threshold and
with duplicates suppressed (`distinct`),

    counting   finds exactly as many objects as the prompt names,
    objects    finds each named object: a distinct detection of its shape whose colour (the
               mean of the bright pixels in its box, nearest of COLOUR_RGB) is the named one,
    position   places the first named object from the second as the prompt says (the
               generator's own rule, `shapes.relation`, on the detected boxes);

and `Verdict.correct` is all three. The detector sees each image enlarged by `scale` so its
objects have the sizes it was trained on (shapes-det draws at shape_scale 0.7 on 64 px), set
in a canvas of its training size (`detect`). On real val images of the default pipeline the
judges score 0.93 (digits-det, one detection of the digit) and 0.77 (shapes-det, 1-2 object
captions): the ceilings the stage reports as "<metric>/real".

For a class-labelled set (digits) `judge_class` asks for one detection of the prompt's
class: a second judge of prompt accuracy, independent of the feature network.

`held_out_prompts` builds the prompts an evaluation asks a model for combinations it never
saw: each held-out "colour shape" binding alone, and every ordered pair of them in each
relation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from components.detection.boxes import box_iou
from components.vision.data.shapes import (
    BACKGROUND_MAX,
    COLOUR_RGB,
    COLOURS,
    SHAPES,
    parse_caption,
    relation_of_centres,
)

RELATIONS = ("left of", "right of", "above", "below")
DUPLICATE_IOU = 0.5  # two detections overlapping more are one object
BRIGHT = BACKGROUND_MAX + 60  # a pixel whose brightest channel exceeds this is an object's


@dataclass(frozen=True)
class Found:
    """One detection above threshold: its class name, colour and box (x0, y0, x1, y1) in the
    generated image's pixels."""

    shape: str
    colour: str | None
    box: tuple[float, float, float, float]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Verdict:
    counting: bool
    objects: bool
    position: bool  # True for a one-object prompt

    @property
    def correct(self) -> bool:
        return self.counting and self.objects and self.position


def parse_binding(phrase: str) -> tuple[str, str]:
    """ "yellow circle" -> ("yellow", "circle"); ValueError naming the phrase otherwise."""
    words = phrase.lower().split()
    if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
        raise ValueError(
            f"held-out phrase {phrase!r}: compositional prompts need '<colour> <shape>' "
            f"bindings (colours {COLOURS}, shapes {SHAPES})"
        )
    return words[0], words[1]


def held_out_prompts(bindings: Sequence[str], size: str) -> tuple[list[str], list[str]]:
    """(one-object prompts, two-object prompts) over the held-out `bindings`."""
    parsed = [parse_binding(b) for b in bindings]
    if len(set(parsed)) < 2:
        raise ValueError(
            f"held-out phrases {list(bindings)}: two-object prompts need at least 2 distinct "
            "held-out bindings"
        )
    singles = [f"a {size} {c} {s}" for c, s in parsed]
    pairs = [
        f"a {size} {a[0]} {a[1]} {rel} a {size} {b[0]} {b[1]}"
        for i, a in enumerate(parsed)
        for j, b in enumerate(parsed)
        if i != j
        for rel in RELATIONS
    ]
    return singles, pairs


def box_colour(image: np.ndarray, box: Sequence[float]) -> str | None:
    """The named colour nearest the mean of the bright pixels of uint8 `image` [H, W, 3]
    inside `box` (x0, y0, x1, y1), or None when the box holds none."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    patch = image[y0:y1, x0:x1].reshape(-1, 3).astype(np.float64)
    bright = patch[patch.max(axis=1) > BRIGHT]
    if len(bright) == 0:
        return None
    mean = bright.mean(axis=0)
    return min(COLOURS, key=lambda c: float(((mean - np.array(COLOUR_RGB[c])) ** 2).sum()))


def distinct(boxes: torch.Tensor, iou: float = DUPLICATE_IOU) -> list[int]:
    """Greedy non-maximum suppression, any class: the indices of `boxes` [K, 4] (xyxy, best
    first) that overlap no better-scored kept box by more than `iou`. DETR's set loss
    discourages duplicates but does not forbid them, and counting must not see one object
    twice."""
    kept: list[int] = []
    if len(boxes):
        overlap = box_iou(boxes, boxes)[0]
        for i in range(len(boxes)):
            if all(float(overlap[i, j]) <= iou for j in kept):
                kept.append(i)
    return kept


def detect(detector, images: np.ndarray, scale: float, threshold: float) -> list[list[Found]]:
    """uint8 images [N, H, W, C] -> per image its detections above `threshold`. Each image
    is enlarged by `scale` (bilinear) and set in the middle of a canvas of the detector's
    training size, filled with the image's median border colour (its background), so that
    its objects have the sizes, and the canvas the extent, the detector learnt; the boxes
    are brought back to the image's pixels (`Detector.detect_fitted` with `canvas`)."""
    if images.shape[-1] == 1:  # grey: the detector reads RGB
        images = np.repeat(images, 3, axis=-1)
    out = []
    placed = detector.detect_fitted(list(images), scale=scale, canvas=True)
    for image, found in zip(images, placed, strict=True):
        above = found.scores >= threshold
        boxes_above, labels_above = found.boxes[above], found.labels[above]
        keep = distinct(boxes_above)
        boxes = boxes_above[keep].tolist()
        labels = labels_above[keep].tolist()
        out.append([
            Found(detector.classes[label], box_colour(image, box), tuple(box))
            for label, box in zip(labels, boxes, strict=True)
        ])  # fmt: skip
    return out


def judge(prompt: str, found: Sequence[Found]) -> Verdict:
    """How the detections `found` in one image answer `prompt` (the module doc)."""
    wanted = parse_caption(prompt)
    counting = len(found) == len(wanted.objects)
    # each named object to a distinct detection of its shape and colour, in prompt order
    taken: list[int] = []
    for obj in wanted.objects:
        match = next(
            (
                i
                for i, f in enumerate(found)
                if i not in taken and f.shape == obj.shape and f.colour == obj.colour
            ),
            None,
        )
        if match is None:
            break
        taken.append(match)
    chosen = [found[i] for i in taken]
    objects = len(chosen) == len(wanted.objects)
    position = True
    if wanted.relation is not None:
        position = (
            objects and relation_of_centres(chosen[0].centre, chosen[1].centre) == wanted.relation
        )
    return Verdict(counting, objects, position)


def judge_class(name: str, found: Sequence[Found]) -> Verdict:
    """One object of class `name` asked for (a digit): exactly one detection, of that class."""
    return Verdict(len(found) == 1, any(f.shape == name for f in found), True)


def rates(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """Shares of `verdicts` right on counting, objects, position and all of them."""
    n = max(1, len(verdicts))
    return {
        "accuracy": sum(v.correct for v in verdicts) / n,
        "counting": sum(v.counting for v in verdicts) / n,
        "objects": sum(v.objects for v in verdicts) / n,
        "position": sum(v.position for v in verdicts) / n,
    }
