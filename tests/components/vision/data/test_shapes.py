import re

import numpy as np
import pytest

from components.vision.data import shapes
from components.vision.data.config import ShapesConfig
from components.vision.data.shapes import (
    BACKGROUND_MAX,
    COLOUR_RGB,
    COLOURS,
    SHAPES,
    SIZES,
    ShapeObject,
    caption,
    relation,
    render,
    shape_mask,
)

SIZE = 32
PHRASE = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")


@pytest.fixture(scope="module")
def images():
    config = ShapesConfig(seed=3)
    return [render(config, i, SIZE) for i in range(300)]


def _touching(a, b):
    return (
        a[0] <= b[0] + b[2] and b[0] <= a[0] + a[2] and a[1] <= b[1] + b[3] and b[1] <= a[1] + a[3]
    )


def test_same_seed_same_pixels_other_seed_other_pixels():
    a, b = ShapesConfig(seed=1), ShapesConfig(seed=2)
    for index in range(20):
        first, again = render(a, index, SIZE), render(ShapesConfig(seed=1), index, SIZE)
        assert first.image.tobytes() == again.image.tobytes()
        assert first.objects == again.objects and first.caption == again.caption
    differ = [
        render(a, i, SIZE).image.tobytes() != render(b, i, SIZE).image.tobytes() for i in range(20)
    ]
    assert all(differ)
    assert render(a, 0, SIZE).image.tobytes() != render(a, 1, SIZE).image.tobytes()


def test_pinned_first_images():
    # Pins the generator: a change here changes every shapes data set (bump the stage version).
    config = ShapesConfig()
    drawn = [render(config, i, SIZE) for i in range(3)]
    assert [d.caption for d in drawn] == [
        "a small yellow cross below a small cyan diamond",
        "a large cyan hexagon",
        "a medium green star left of a small white triangle",
    ]
    assert drawn[1].objects[0].bbox == (6, 4, 16, 14)
    assert [int(d.image.astype(np.int64).sum()) for d in drawn] == PINNED_SUMS


PINNED_SUMS = [78679, 163691, 77536]


def test_boxes_are_tight_around_each_objects_pixels(images):
    checked_edges = 0
    for drawn in images:
        for i, obj in enumerate(drawn.objects):
            x, y, w, h = obj.bbox
            assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE
            colour = np.all(drawn.image == COLOUR_RGB[obj.colour], axis=2)
            # Objects of one colour never touch boxes, so near this box that colour is its own.
            ring = colour[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1].sum()
            inside = colour[y : y + h, x : x + w]
            assert ring == inside.sum(), (drawn.caption, obj)
            later = drawn.objects[i + 1 :]
            if not any(_touching(obj.bbox, other.bbox) for other in later):
                # Nothing drawn over it: its pixels are all there and reach every box edge.
                assert inside.sum() == obj.area
                assert inside[0].any() and inside[-1].any()
                assert inside[:, 0].any() and inside[:, -1].any()
                checked_edges += 1
    assert checked_edges > 300


def test_box_is_the_tight_box_of_the_shapes_own_mask():
    for shape in SHAPES:
        for extent in (3, 8, 12, 17, 48):
            mask = shape_mask(shape, extent)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert mask.sum() > 0
            # Symmetric left-right (every shape here is), so no edge is lost to rounding.
            assert (mask == mask[:, ::-1]).all(), (shape, extent)
            assert cols[0] + cols[-1] == extent - 1 and rows[-1] < extent


def test_objects_and_background_never_share_a_colour(images):
    object_max = min(max(rgb) for rgb in COLOUR_RGB.values())
    assert object_max >= 200 > BACKGROUND_MAX
    rgb = np.array(list(COLOUR_RGB.values()), float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=2) + np.eye(len(rgb)) * 1e9
    assert distances.min() > 80
    for drawn in images:
        bright = drawn.image.max(axis=2) > BACKGROUND_MAX
        covered = np.zeros_like(bright)
        for obj in drawn.objects:
            x, y, w, h = obj.bbox
            covered[y : y + h, x : x + w] = True
        assert not (bright & ~covered).any()  # every bright pixel is an object's
        known = np.zeros_like(bright)
        for rgb_value in COLOUR_RGB.values():
            known |= np.all(drawn.image == rgb_value, axis=2)
        assert (known == bright).all()  # no blended (anti-aliased) pixel


def test_variety(images):
    assert len(SHAPES) >= 6 and len(COLOURS) >= 6 and len(SIZES) >= 2
    objects = [obj for drawn in images for obj in drawn.objects]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.colour for o in objects} == set(COLOURS)
    assert {o.size for o in objects} == set(SIZES)
    assert {len(d.objects) for d in images} == {1, 2}
    kinds = [d.background for d in images]
    assert {"plain", "noise", "stripes", "checker"} == set(kinds)
    assert 0.35 < kinds.count("plain") / len(kinds) < 0.65
    plain = [render(ShapesConfig(background="plain"), i, SIZE).background for i in range(30)]
    textured = [render(ShapesConfig(background="textured"), i, SIZE).background for i in range(30)]
    assert set(plain) == {"plain"} and "plain" not in textured


def test_sizes_are_fractions_of_the_canvas(images):
    extents = {}
    for drawn in images:
        for obj in drawn.objects:
            if obj.shape in ("square", "cross"):  # they fill their square
                extents.setdefault(obj.size, set()).add(obj.bbox[2:])
    assert extents == {"small": {(8, 8)}, "medium": {(12, 12)}, "large": {(16, 16)}}


def _parse(text):
    return [m.groups() for m in PHRASE.finditer(text)]


def test_captions_say_the_attributes(images):
    for drawn in images:
        attributes = [(o.size, o.colour, o.shape) for o in drawn.objects]
        assert _parse(drawn.caption) == attributes
        if len(attributes) == 1:
            assert drawn.caption == "a {} {} {}".format(*attributes[0])
        else:
            a, b = drawn.objects
            said = PHRASE.sub("", drawn.caption).strip()
            dx = (a.bbox[0] + a.bbox[2] / 2) - (b.bbox[0] + b.bbox[2] / 2)
            dy = (a.bbox[1] + a.bbox[3] / 2) - (b.bbox[1] + b.bbox[3] / 2)
            if abs(dx) >= abs(dy):
                assert said == ("left of" if dx < 0 else "right of")
            else:
                assert said == ("above" if dy < 0 else "below")
        assert drawn.labels == tuple(SHAPES.index(o.shape) for o in drawn.objects)


def test_relations_and_lists():
    def box(shape, x, y, w=4):
        return ShapeObject(shape, "red", "small", (x, y, w, w), w * w)

    circle, square, star = box("circle", 0, 10), box("square", 20, 12), box("star", 10, 0)
    assert relation(circle, square) == "left of" and relation(square, circle) == "right of"
    assert relation(star, circle) == "right of"  # dx 10 > dy 10? a tie: horizontal
    assert relation(box("star", 0, 0), box("square", 1, 20)) == "above"
    assert relation(box("star", 0, 20), box("square", 1, 0)) == "below"
    assert caption([square, circle, star]) == (
        "a small red circle, a small red star and a small red square"
    )
    assert caption([circle]) == "a small red circle"


def test_three_or_more_objects_read_left_to_right():
    config = ShapesConfig(min_objects=3, max_objects=5)
    for index in range(40):
        drawn = render(config, index, SIZE)
        if len(drawn.objects) < 3:
            continue
        ordered = sorted(drawn.objects, key=lambda o: (*o.centre, drawn.objects.index(o)))
        assert _parse(drawn.caption) == [(o.size, o.colour, o.shape) for o in ordered]
        assert " and " in drawn.caption and "left of" not in drawn.caption


def test_any_canvas_with_eight_objects():
    config = ShapesConfig(min_objects=8, max_objects=8, scale=0.5)
    for index in range(10):
        drawn = render(config, index, 96)
        assert drawn.image.shape == (96, 96, 3)
        assert len(drawn.objects) == 8
        for obj in drawn.objects:
            x, y, w, h = obj.bbox
            assert x + w <= 96 and y + h <= 96


def test_overlap_cap():
    exclusive = ShapesConfig(min_objects=2, max_objects=4, max_overlap=0.0)
    for index in range(40):
        drawn = render(exclusive, index, SIZE)
        for obj in drawn.objects:
            x, y, w, h = obj.bbox
            own = np.all(drawn.image[y : y + h, x : x + w] == COLOUR_RGB[obj.colour], axis=2)
            assert own.sum() == obj.area  # nothing drew over any pixel of it
    capped = ShapesConfig(min_objects=2, max_objects=2, max_overlap=0.25)
    overlapped = 0
    for index in range(200):
        drawn = render(capped, index, SIZE)
        first = drawn.objects[0]
        x, y, w, h = first.bbox
        shown = np.all(drawn.image[y : y + h, x : x + w] == COLOUR_RGB[first.colour], axis=2)
        assert shown.sum() >= 0.75 * first.area
        overlapped += shown.sum() < first.area
    assert overlapped > 0  # overlap does happen under the cap


def test_parse_caption_reads_back_every_caption_the_generator_writes():
    config = ShapesConfig(seed=3, min_objects=1, max_objects=3)
    seen = set()
    for index in range(200):
        drawn = shapes.render(config, index, 32)
        parsed = shapes.parse_caption(drawn.caption)
        seen.add(len(parsed.objects))
        written = sorted((o.size, o.colour, o.shape) for o in drawn.objects)
        assert sorted((o.size, o.colour, o.shape) for o in parsed.objects) == written
        if len(drawn.objects) == 2:
            first, second = drawn.objects
            assert parsed.relation == shapes.relation(first, second)
            assert (parsed.objects[0].shape, parsed.objects[0].colour) == (
                first.shape,
                first.colour,
            )
        else:
            assert parsed.relation is None
    assert seen == {1, 2, 3}


def test_parse_caption_names_the_part_outside_the_grammar():
    parsed = shapes.parse_caption("  A large  yellow circle below a small red star ")
    assert parsed.objects[1] == shapes.PromptObject("small", "red", "star")
    assert parsed.relation == "below" and parsed.objects[0].binding == "yellow circle"
    with pytest.raises(ValueError, match="'a huge red circle' is not 'a <size> <colour> <shape>'"):
        shapes.parse_caption("a huge red circle")
    with pytest.raises(ValueError, match="'a red circle'"):
        shapes.parse_caption("a small blue square left of a red circle")
