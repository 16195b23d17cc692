"""Box-safe augmentations, torch only: every one moves the boxes with the pixels.

A sample is (image [C, H, W] uint8 or float, boxes float [n, 4] xyxy in pixels, labels [n]).
Coordinates are continuous: pixel (row r, column c) covers [c, c + 1) × [r, r + 1), so a
rectangle filling columns 2..5 has x0 = 2, x1 = 6, and a W-wide image spans [0, W].

    augment = Compose([RandomHorizontalFlip(), RandomScale(0.75, 1.25), RandomCrop(0.6)])
    image, boxes, labels = augment(image, boxes, labels, torch.Generator().manual_seed(0))

Deterministic functions: `hflip`, `resize` (bilinear, antialiased when shrinking; boxes
scale by exactly the size ratio of each axis), `crop` (boxes shifted and clipped to the
crop; a box keeping less than `min_visible` of its area, or none, is dropped with its
label). The Random* classes draw their parameters from the generator they are given, so a
seeded generator repeats the augmentation exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

Sample = tuple[Tensor, Tensor, Tensor]  # image [C, H, W], boxes [n, 4] xyxy pixels, labels [n]
CROP_TRIES = 10


class Augmentation(Protocol):
    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator
    ) -> Sample: ...


def hflip(image: Tensor, boxes: Tensor, labels: Tensor) -> Sample:
    """Mirror left-right: column c -> W - 1 - c, box x range [x0, x1] -> [W - x1, W - x0]."""
    width = image.shape[-1]
    flipped = torch.stack(
        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
    )
    return image.flip(-1), flipped, labels


def resize(image: Tensor, boxes: Tensor, labels: Tensor, height: int, width: int) -> Sample:
    """The image resized to height × width (bilinear, antialiased; uint8 stays uint8,
    rounded), each box's x scaled by width / W and y by height / H."""
    old_height, old_width = image.shape[-2:]
    pixels = F.interpolate(
        image[None].float(), size=(height, width), mode="bilinear", antialias=True
    )[0]
    if image.dtype == torch.uint8:
        pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    else:
        pixels = pixels.to(image.dtype)
    scale = boxes.new_tensor(
        [width / old_width, height / old_height, width / old_width, height / old_height]
    )
    return pixels, boxes * scale, labels


def crop(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    top: int,
    left: int,
    height: int,
    width: int,
    min_visible: float = 0.0,
) -> Sample:
    """The height × width window at (top, left); boxes shifted into it and clipped to it.
    A box is kept when its clipped part has a positive width and height and at least
    `min_visible` of its own area."""
    window = image[..., top : top + height, left : left + width]
    shifted = boxes - boxes.new_tensor([left, top, left, top])
    limits = boxes.new_tensor([width, height, width, height])
    clipped = torch.minimum(shifted.clamp(min=0), limits)
    size = clipped[:, 2:] - clipped[:, :2]
    own = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    visible = size.prod(dim=1)
    keep = (size > 0).all(dim=1) & (visible >= min_visible * own)
    return window, clipped[keep], labels[keep]


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _integer(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform in low..high, both included."""
    return int(torch.randint(low, high + 1, (), generator=generator))


class RandomHorizontalFlip:
    """`hflip` with probability p."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator
    ) -> Sample:
        if _uniform(generator) < self.p:
            return hflip(image, boxes, labels)
        return image, boxes, labels


class RandomScale:
    """Scale jitter: `resize` both sides by one factor drawn uniformly in [low, high]
    (each side rounded, at least 1 pixel)."""

    def __init__(self, low: float = 0.75, high: float = 1.25):
        if not 0 < low <= high:
            raise ValueError(f"RandomScale: expected 0 < low <= high, got {low}, {high}")
        self.low, self.high = low, high

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator
    ) -> Sample:
        factor = _uniform(generator, self.low, self.high)
        height, width = image.shape[-2:]
        new_height, new_width = max(1, round(height * factor)), max(1, round(width * factor))
        return resize(image, boxes, labels, new_height, new_width)


class RandomCrop:
    """With probability p, `crop` a window whose sides are each drawn uniformly between
    min_size of the image's side and all of it, placed uniformly. Boxes keeping less than
    min_visible of their area are dropped. A window that keeps no box of an image that has
    some is drawn again, up to CROP_TRIES times; then the sample is left as it is."""

    def __init__(self, min_size: float = 0.5, min_visible: float = 0.5, p: float = 1.0):
        if not 0 < min_size <= 1:
            raise ValueError(f"RandomCrop: expected 0 < min_size <= 1, got {min_size}")
        if not 0 <= min_visible <= 1:
            raise ValueError(f"RandomCrop: expected 0 <= min_visible <= 1, got {min_visible}")
        self.min_size, self.min_visible, self.p = min_size, min_visible, p

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator
    ) -> Sample:
        if _uniform(generator) >= self.p:
            return image, boxes, labels
        height, width = image.shape[-2:]
        for _ in range(CROP_TRIES):
            crop_height = _integer(generator, math.ceil(self.min_size * height), height)
            crop_width = _integer(generator, math.ceil(self.min_size * width), width)
            top = _integer(generator, 0, height - crop_height)
            left = _integer(generator, 0, width - crop_width)
            window = (top, left, crop_height, crop_width)
            cropped = crop(image, boxes, labels, *window, min_visible=self.min_visible)
            if len(cropped[1]) or not len(boxes):
                return cropped
        return image, boxes, labels


class Compose:
    """The augmentations in order, all drawing from the one generator."""

    def __init__(self, augmentations: Sequence[Augmentation]):
        self.augmentations = list(augmentations)

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator
    ) -> Sample:
        for augmentation in self.augmentations:
            image, boxes, labels = augmentation(image, boxes, labels, generator)
        return image, boxes, labels
