"""Generated images of coloured shapes, with exact boxes and captions from their attributes.

    image = render(ShapesConfig(seed=0), index=3, size=32)
    image.image        uint8 [32, 32, 3]
    image.objects      [ShapeObject("circle", "red", "small", bbox=(4, 17, 8, 8), area=52), ...]
    image.caption      "a small red circle left of a large blue square"
    image.labels       (0, 1): the objects' indices in SHAPES, in drawing order

Every image comes from numpy's Generator seeded with [seed, index] alone: image 3 is the same
in a set of 10 or of 10,000. Shapes are drawn without anti-aliasing from masks evaluated at
pixel centres, so each pixel is exactly its object's colour or the background.

Objects: one of SHAPES, COLOURS and SIZES each, uniformly. A size is the side of the square
the shape is inscribed in, a fraction of the canvas (SIZE_FRACTIONS × config.scale, >= 3 px).
The box (COCO xywh: left, top, width, height in pixels) is tight around the object's own
mask, as drawn before any later object covers part of it; `area` is that mask's pixel count.
Placement is uniform over positions that keep the whole object on the canvas and such that
  - later objects cover at most `max_overlap` of any object's pixels,
  - no object's centre lies inside another's box (so "left of" / "above" read true),
  - objects of one colour do not touch boxes (so they never merge into one blob);
an object that finds no such place in PLACEMENT_TRIES draws is left out.

Backgrounds are dark (every channel <= 60; every object colour has a channel >= 200): a plain
colour, or a low-contrast texture on one (grey noise, stripes, or a checkerboard).

Captions (`caption`):
  1 object    "a small red circle"
  2 objects   "<first> <relation> <second>", the first as drawn; the relation compares the
              box centres along the axis where they differ most: "left of", "right of",
              "above", "below" (horizontal on a tie)
  3+ objects  all of them left to right by box centre (ties: top to bottom, then drawing
              order): "a small red circle, a large blue square and a medium green triangle"
`parse_caption` reads one back into its objects and relation (a prompt's attributes, for
scoring what a model drew from it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from components.vision.data.config import ShapesConfig

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "hexagon", "star")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
SIZES = ("small", "medium", "large")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 220),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
SIZE_FRACTIONS = {"small": 0.25, "medium": 0.375, "large": 0.5}
BACKGROUNDS = ("plain", "noise", "stripes", "checker")  # ShapesImage.background
BACKGROUND_MAX = 60  # no background channel exceeds this
MIN_EXTENT = 3
PLACEMENT_TRIES = 100


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: its attributes, its tight box (x, y, w, h) and its pixel count."""

    shape: str
    colour: str
    size: str
    bbox: tuple[int, int, int, int]
    area: int

    @property
    def label(self) -> int:
        return SHAPES.index(self.shape)

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2, y + h / 2

    def to_json(self) -> dict[str, Any]:
        """{shape, colour, size, bbox}: the object as the data set stores it."""
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "bbox": list(self.bbox),
        }


@dataclass(frozen=True)
class ShapesImage:
    image: np.ndarray  # uint8 [H, W, 3]
    objects: tuple[ShapeObject, ...]  # in drawing order
    caption: str
    labels: tuple[int, ...]  # the objects' indices in SHAPES
    background: str  # one of BACKGROUNDS


def render(config: ShapesConfig, index: int, size: int) -> ShapesImage:
    """Image `index` of the set `config` describes, on a size×size canvas."""
    rng = np.random.default_rng([config.seed, index])
    image, background = _background(rng, size, config.background)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects: list[ShapeObject] = []
    visible: list[np.ndarray] = []  # bool [size, size]: each object's pixels still showing
    for _ in range(count):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = COLOURS[rng.integers(len(COLOURS))]
        size_name = SIZES[rng.integers(len(SIZES))]
        extent = min(size, max(MIN_EXTENT, round(SIZE_FRACTIONS[size_name] * config.scale * size)))
        local = shape_mask(shape, extent)
        rows, cols = np.flatnonzero(local.any(axis=1)), np.flatnonzero(local.any(axis=0))
        for _ in range(PLACEMENT_TRIES):
            x0, y0 = (int(v) for v in rng.integers(0, size - extent + 1, size=2))
            bbox = (x0 + int(cols[0]), y0 + int(rows[0]), len(cols), len(rows))
            candidate = ShapeObject(shape, colour, size_name, bbox, int(local.sum()))
            mask = np.zeros((size, size), bool)
            mask[y0 : y0 + extent, x0 : x0 + extent] = local
            if _fits(candidate, mask, objects, visible, config.max_overlap):
                for i, shown in enumerate(visible):
                    visible[i] = shown & ~mask
                objects.append(candidate)
                visible.append(mask)
                image[mask] = COLOUR_RGB[colour]
                break
    return ShapesImage(
        image, tuple(objects), caption(objects), tuple(o.label for o in objects), background
    )


def caption(objects: list[ShapeObject] | tuple[ShapeObject, ...]) -> str:
    """The caption of `objects` (in drawing order), by the rules in the module doc."""
    phrases = [f"a {o.size} {o.colour} {o.shape}" for o in objects]
    if len(objects) <= 1:
        return "".join(phrases)
    if len(objects) == 2:
        return f"{phrases[0]} {relation(objects[0], objects[1])} {phrases[1]}"
    order = sorted(range(len(objects)), key=lambda i: (*objects[i].centre, i))
    ordered = [phrases[i] for i in order]
    return ", ".join(ordered[:-1]) + " and " + ordered[-1]


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where `a` is from `b`: "left of" / "right of" / "above" / "below", along the axis on
    which their box centres differ most (image y grows downwards)."""
    return relation_of_centres(a.centre, b.centre)


def relation_of_centres(a: tuple[float, float], b: tuple[float, float]) -> str:
    """`relation` for box centres (x, y) a and b."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


@dataclass(frozen=True)
class PromptObject:
    """One object a caption asks for."""

    size: str
    colour: str
    shape: str

    @property
    def binding(self) -> str:
        """ "red circle": the colour-shape pair (what held-out combinations name)."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class ParsedCaption:
    """A caption read back: its objects as written and, for two, how the first lies from
    the second ("left of", "right of", "above", "below"); None otherwise."""

    objects: tuple[PromptObject, ...]
    relation: str | None


_PHRASE = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
_RELATIONS = ("left of", "right of", "above", "below")


def parse_caption(text: str) -> ParsedCaption:
    """The objects and relation of a caption in the grammar of `caption` (module doc).
    ValueError naming the text when it is not in that grammar."""
    words = " ".join(text.strip().lower().split())

    def phrase(part: str) -> PromptObject:
        match = _PHRASE.fullmatch(part)
        if match is None:
            raise ValueError(
                f"caption {text!r}: {part!r} is not 'a <size> <colour> <shape>' "
                f"(sizes {SIZES}, colours {COLOURS}, shapes {SHAPES})"
            )
        return PromptObject(*match.groups())

    for relation_words in _RELATIONS:
        first, found, second = words.partition(f" {relation_words} ")
        if found and "," not in words and " and " not in words:
            return ParsedCaption((phrase(first), phrase(second)), relation_words)
    if " and " in words:
        head, _, last = words.rpartition(" and ")
        parts = [*head.split(", "), last]
        return ParsedCaption(tuple(phrase(part) for part in parts), None)
    return ParsedCaption((phrase(words),), None)


@cache
def shape_mask(shape: str, extent: int) -> np.ndarray:
    """bool [extent, extent]: the pixels of `shape` inscribed in an extent×extent square,
    tested at pixel centres (no anti-aliasing). Cached: read it, never write it."""
    centres = (np.arange(extent) + 0.5) / extent * 2 - 1  # pixel centres in (-1, 1)
    u, v = np.meshgrid(centres, centres)  # u: right, v: down
    if shape == "circle":
        mask = u * u + v * v <= 1
    elif shape == "square":
        mask = np.ones((extent, extent), bool)
    elif shape == "cross":
        arm = 1 / 3
        mask = (np.abs(u) <= arm) | (np.abs(v) <= arm)
    elif shape in _POLYGONS:
        # Shrunk by a hair: a pixel centre exactly on an edge is then outside on both sides
        # of the axis alike, instead of by float rounding (a lopsided diamond).
        mask = _inside(u, v, _POLYGONS[shape] * (1 - 1e-9))
    else:
        raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")
    mask.setflags(write=False)
    return mask


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    vertices = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    vertices[:, 1] += (-1 - vertices[:, 1].min() - vertices[:, 1].max() + 1) / 2  # centre in v
    return vertices


_HEXAGON_ANGLES = np.arange(6) * np.pi / 3
_POLYGONS: dict[str, np.ndarray] = {  # vertices (u, v) in [-1, 1]²
    "triangle": np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]),
    "diamond": np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
    "hexagon": np.stack([np.cos(_HEXAGON_ANGLES), np.sin(_HEXAGON_ANGLES)], axis=1),
    "star": _star(),
}


def _inside(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule: points (u, v) inside the polygon `vertices` [K, 2]."""
    inside = np.zeros(u.shape, bool)
    for (u0, v0), (u1, v1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        crosses = (v0 > v) != (v1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = u0 + (v - v0) * (u1 - u0) / (v1 - v0)
        inside ^= crosses & (u < at)
    return inside


def _fits(
    new: ShapeObject,
    mask: np.ndarray,
    objects: list[ShapeObject],
    visible: list[np.ndarray],
    max_overlap: float,
) -> bool:
    for old, shown in zip(objects, visible, strict=True):
        covered = old.area - int((shown & ~mask).sum())
        if covered > max_overlap * old.area:
            return False
        if _contains(old.bbox, new.centre) or _contains(new.bbox, old.centre):
            return False
        if old.colour == new.colour and _touch(old.bbox, new.bbox):
            return False
    return True


def _contains(bbox: tuple[int, int, int, int], point: tuple[float, float]) -> bool:
    x, y, w, h = bbox
    return x < point[0] < x + w and y < point[1] < y + h


def _touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Boxes overlap or share an edge (no background pixel between them)."""
    return (
        a[0] <= b[0] + b[2] and b[0] <= a[0] + a[2] and a[1] <= b[1] + b[3] and b[1] <= a[1] + a[3]
    )


def _background(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, str]:
    """uint8 [size, size, 3], every channel <= BACKGROUND_MAX, and its BACKGROUNDS name."""
    plain = kind == "plain" or (kind == "mixed" and rng.random() < 0.5)
    if plain:
        colour = rng.integers(0, BACKGROUND_MAX - 11, size=3)
        return np.broadcast_to(colour.astype(np.uint8), (size, size, 3)).copy(), "plain"
    base = rng.integers(0, BACKGROUND_MAX - 20 + 1, size=3)
    contrast = int(rng.integers(8, 21))
    texture = BACKGROUNDS[1 + int(rng.integers(3))]
    rows, cols = np.mgrid[0:size, 0:size]
    if texture == "noise":
        pattern = rng.integers(0, contrast + 1, size=(size, size))
    elif texture == "stripes":
        half = int(rng.integers(2, 5))
        coord = rows if rng.random() < 0.5 else cols
        pattern = (coord // half) % 2 * contrast
    else:
        cell = int(rng.integers(3, 9))
        pattern = (rows // cell + cols // cell) % 2 * contrast
    return (base + pattern[..., None]).astype(np.uint8), texture
