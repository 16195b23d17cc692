import numpy as np
import pytest

from components.detection.data.config import DetectionDataConfig
from components.detection.data.synthetic import (
    DIGIT_ROWS,
    INK_THRESHOLD,
    class_names,
    generate,
    image_split,
    render,
    store_record,
)
from components.vision.data.shapes import COLOURS, SHAPES
from components.vision.data.store import split_of


@pytest.mark.parametrize("source", ["shapes", "digits"])
def test_an_image_depends_on_seed_and_index_alone(source):
    small = DetectionDataConfig(source=source, count=10, seed=3)
    large = DetectionDataConfig(source=source, count=10_000, seed=3)
    a, b = render(small, 4), render(large, 4)
    assert np.array_equal(a.image, b.image) and a.objects == b.objects
    assert not np.array_equal(a.image, render(small, 5).image)
    other_seed = DetectionDataConfig(source=source, count=10, seed=4)
    assert not np.array_equal(a.image, render(other_seed, 4).image)


def test_shapes_det_counts_labels_and_boxes():
    config = DetectionDataConfig(source="shapes", size=80, count=40, min_objects=2)
    counts = []
    for _, _, image in generate(config):
        assert image.image.shape == (80, 80, 3) and image.image.dtype == np.uint8
        counts.append(len(image.objects))
        for obj in image.objects:
            x, y, w, h = obj.bbox
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 80 and y + h <= 80
            assert 0 < obj.area <= w * h and 0 <= obj.label < len(SHAPES)
    assert min(counts) >= 2 and max(counts) == 8  # many objects fit at shape_scale 0.5


def test_shape_colour_classes_split_each_shape_by_colour():
    names = class_names(DetectionDataConfig(classes="shape_colour"))
    assert len(names) == len(SHAPES) * len(COLOURS) == 56
    assert names[:2] == ("red circle", "green circle") and names[-1] == "white star"
    by_shape = render(DetectionDataConfig(count=5), 2)
    by_colour = render(DetectionDataConfig(count=5, classes="shape_colour"), 2)
    assert [o.bbox for o in by_shape.objects] == [o.bbox for o in by_colour.objects]
    for shape, colour in zip(by_shape.objects, by_colour.objects, strict=True):
        assert colour.label // len(COLOURS) == shape.label
        assert names[colour.label].split()[1] == SHAPES[shape.label]


def test_digits_det_boxes_are_tight_on_each_digits_ink():
    # Boxes that do not overlap: the ink inside a box is that digit's ink alone.
    config = DetectionDataConfig(source="digits", size=64, count=30, max_overlap=0.0)
    objects = 0
    for _, _, image in generate(config):
        ink = image.image[:, :, 0] > INK_THRESHOLD
        assert (image.image == image.image[:, :, :1]).all()  # grey in RGB
        covered = np.zeros_like(ink)
        for obj in image.objects:
            x, y, w, h = (int(v) for v in obj.bbox)
            assert obj.bbox == (x, y, w, h) and 0 <= obj.label <= 9
            inside = ink[y : y + h, x : x + w]
            # Tight: ink on each of the box's four edges, and the area is the ink count.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            assert inside.sum() == obj.area
            covered[y : y + h, x : x + w] = True
            objects += 1
        assert not (ink & ~covered).any()  # no ink outside the boxes
    assert objects >= 60


def test_digits_det_digit_sides_follow_the_config():
    config = DetectionDataConfig(source="digits", count=20, digit_min_side=20, digit_max_side=24)
    sides = [max(o.bbox[2:]) for _, _, image in generate(config) for o in image.objects]
    # The longer ink side is the drawn side, less what resizing left below the threshold.
    assert 18 <= min(sides) and max(sides) <= 24


def test_digits_det_train_and_val_draw_disjoint_handwriting():
    # Fake digits whose label is their row: an object's label says which row it came from.
    images = np.zeros((10, 28, 28), np.uint8)
    images[:, 6:22, 8:20] = 255
    mnist = (images, np.arange(10))
    config = DetectionDataConfig(source="digits", count=60, val_fraction=0.5)
    rows = {"train": set(), "val": set()}
    for _, split, image in generate(config, mnist):
        rows[split] |= {o.label for o in image.objects}
    assert rows["train"] == {0, 2, 4, 6, 8} and rows["val"] == {1, 3, 5, 7, 9}
    assert DIGIT_ROWS == {"train": 0, "val": 1}


def test_splits_are_the_store_hash_split_and_store_records_agree():
    config = DetectionDataConfig(source="digits", count=40, val_fraction=0.3, split_seed=5)
    splits = [image_split(config, i) for i in range(40)]
    assert 3 <= splits.count("val") <= 25
    image = render(config, 7)
    record = store_record(config, 7, image)
    assert split_of(record.key, 0.3, 5) == splits[7] and record.id == 7
    assert record.labels == tuple(o.label for o in image.objects)
    assert [o["bbox"] for o in record.objects] == [list(o.bbox) for o in image.objects]
