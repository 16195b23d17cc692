import json

import numpy as np
import pytest
from PIL import Image

from components.detection.data.coco_folder import read_coco_folder
from components.stage import StageInputError

SIZES = {1: (40, 30), 2: (32, 24), 5: (20, 20)}  # image id -> (width, height)


def write_png(path, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def instances():
    """Three images, categories with sparse ids 3 and 7, five annotations."""
    return {
        "info": {},
        "images": [
            {"id": i, "file_name": f"img{i}.png", "width": w, "height": h}
            for i, (w, h) in SIZES.items()
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 12], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [20.5, 0, 19.5, 30]},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 32, 24]},
            {"id": 13, "image_id": 2, "category_id": 7, "bbox": [5, 5, 4, 4]},
            {"id": 14, "image_id": 5, "category_id": 7, "bbox": [1, 1, 5, 5]},
        ],
        "categories": [
            {"id": 7, "name": "dog", "supercategory": "animal"},
            {"id": 3, "name": "cat", "supercategory": "animal"},
        ],
    }


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    pixels = {i: write_png(images / f"img{i}.png", w, h, i) for i, (w, h) in SIZES.items()}
    return images, tmp_path / "instances.json", pixels


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_reads_images_boxes_and_remaps_categories(folder):
    images, path, pixels = folder
    coco = read_coco_folder(images, write(path, instances()))
    assert coco.classes == ("cat", "dog") and coco.category_ids == (3, 7)
    assert [coco.category_id(label) for label in (0, 1)] == [3, 7]
    by_id = {r.image_id: r for r in coco.records}
    assert list(by_id) == [1, 2, 5]
    for image_id, record in by_id.items():
        assert np.array_equal(record.image, pixels[image_id])
    assert by_id[1].boxes.tolist() == [[2, 3, 10, 12], [20.5, 0, 19.5, 30]]
    assert by_id[1].labels.tolist() == [1, 0] and by_id[2].labels.tolist() == [0, 1]
    assert by_id[1].boxes.dtype == np.float32 and by_id[1].labels.dtype == np.int64
    report = coco.report
    assert (report.images, report.annotations, report.bad_annotations_skipped) == (3, 5, 0)


def test_crowds_are_dropped_and_boxes_within_tolerance_clipped(folder):
    images, path, _ = folder
    data = instances()
    data["annotations"][0]["iscrowd"] = 1
    data["annotations"][2]["bbox"] = [-0.5, 0, 32.75, 24]  # 0.5 px left, 0.25 px right out
    coco = read_coco_folder(images, write(path, data))
    assert coco.report.crowd_annotations_dropped == 1 and coco.report.boxes_clipped == 1
    by_id = {r.image_id: r for r in coco.records}
    assert by_id[1].boxes.tolist() == [[20.5, 0, 19.5, 30]]
    assert by_id[2].boxes[0].tolist() == [0, 0, 32, 24]


def annotation(index, **changes):
    def change(data, images):
        data["annotations"][index].update(changes)

    return change


def duplicate_annotation_id(data, images):
    data["annotations"][3]["id"] = 12


def unknown_image(data, images):
    data["annotations"][3]["image_id"] = 99


def duplicate_image_id(data, images):
    data["images"].append({"id": 2, "file_name": "img1.png", "width": 40, "height": 30})


def missing_file(data, images):
    (images / "img2.png").unlink()


def not_an_image(data, images):
    (images / "img2.png").write_text("these are notes, not pixels\n")


def truncated_png(data, images):
    (images / "img2.png").write_bytes((images / "img2.png").read_bytes()[:60])


def wrong_size(data, images):
    data["images"][1]["width"] = 33


def outside_folder(data, images):
    data["images"][1]["file_name"] = "../instances.json"


# (change, what the message names, counter under skip, annotations left under skip)
BAD_ENTRIES = {
    "box outside": (annotation(3, bbox=[30, 5, 4, 4]), "annotation id 13", "annotations", 4),
    "box below": (annotation(3, bbox=[5, 22, 4, 4]), "annotation id 13", "annotations", 4),
    "box in margin only": (
        annotation(3, bbox=[32.2, 5, 0.5, 4]),
        "annotation id 13",
        "annotations",
        4,
    ),
    "zero width": (annotation(3, bbox=[5, 5, 0, 4]), "annotation id 13", "annotations", 4),
    "zero height": (annotation(3, bbox=[5, 5, 4, 0]), "annotation id 13", "annotations", 4),
    "bbox not numbers": (annotation(3, bbox=[5, 5, "4", 4]), "annotation id 13", "annotations", 4),
    "bbox nan": (annotation(3, bbox=[5, 5, float("nan"), 4]), "annotation id 13", "annotations", 4),
    "unknown category": (annotation(3, category_id=99), "annotation id 13", "annotations", 4),
    "duplicate annotation id": (duplicate_annotation_id, "annotation id 12", "annotations", 4),
    "unknown image id": (unknown_image, "annotation id 13", "annotations", 4),
    "image id not an int": (annotation(3, image_id=[2]), "annotation id 13", "annotations", 4),
    "category not an int": (annotation(3, category_id={}), "annotation id 13", "annotations", 4),
    "no annotation id": (annotation(3, id=None), "annotations[3]", "annotations", 4),
    "duplicate image id": (duplicate_image_id, "image id 2", "images", 5),
    "image missing on disk": (missing_file, "image id 2 (img2.png)", "images", 3),
    "not an image file": (not_an_image, "image id 2 (img2.png)", "images", 3),
    "truncated image": (truncated_png, "image id 2 (img2.png)", "images", 3),
    "image of another size": (wrong_size, "image id 2 (img2.png)", "images", 3),
    "file outside the folder": (outside_folder, "image id 2 (../instances.json)", "images", 3),
}


@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_a_bad_entry_stops_the_read_naming_file_and_id(folder, case):
    images, path, _ = folder
    change, named, _, _ = BAD_ENTRIES[case]
    data = instances()
    change(data, images)
    with pytest.raises(StageInputError) as err:
        read_coco_folder(images, write(path, data), on_bad_annotation="error")
    assert str(path) in str(err.value) and f"{named}:" in str(err.value)


@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_a_bad_entry_is_skipped_and_counted(folder, case, caplog):
    images, path, _ = folder
    change, named, counter, left = BAD_ENTRIES[case]
    data = instances()
    change(data, images)
    coco = read_coco_folder(images, write(path, data), on_bad_annotation="skip")
    report = coco.report
    bad_images = 1 if counter == "images" else 0
    assert (report.bad_images_skipped, report.bad_annotations_skipped) == (
        bad_images,
        1 - bad_images,
    )
    assert report.annotations == left == sum(len(r.labels) for r in coco.records)
    # A skipped image takes its own two annotations with it (a duplicate id has none).
    assert report.annotations_of_skipped_images == 5 - left - (1 - bad_images)
    assert report.images == len(coco.records) == 3 - (left == 3)
    assert named in caplog.text


@pytest.mark.parametrize("policy", ["skip", "error"])
@pytest.mark.parametrize(
    "contents, message",
    [
        ("", "empty annotation file"),
        ("{not json", "malformed JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"images": [], "categories": []}), "no list ['annotations']"),
        (json.dumps({"images": [], "annotations": [], "categories": []}), "no categories"),
    ],
)
def test_a_broken_file_is_fatal_under_either_policy(folder, policy, contents, message):
    images, path, _ = folder
    path.write_text(contents)
    with pytest.raises(StageInputError, match="^" + str(path)) as err:
        read_coco_folder(images, path, on_bad_annotation=policy)
    assert message in str(err.value)


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_bad_categories_are_fatal(folder, policy):
    images, path, _ = folder
    data = instances()
    data["categories"].append({"id": 3, "name": "cat again"})
    with pytest.raises(StageInputError, match="category id 3 listed twice"):
        read_coco_folder(images, write(path, data), on_bad_annotation=policy)


def test_no_usable_annotation_left_is_fatal(folder):
    images, path, _ = folder
    data = instances()
    for entry in data["annotations"]:
        entry["category_id"] = 42
    with pytest.raises(StageInputError, match="no usable annotations \\(5 bad"):
        read_coco_folder(images, write(path, data), on_bad_annotation="skip")


def test_a_missing_annotation_file_is_named(folder):
    images, path, _ = folder
    with pytest.raises(StageInputError, match="file not found"):
        read_coco_folder(images, path)
