"""The shapes data set's COCO instances files, read by pycocotools as detection code reads
them, and the instances writer itself."""

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from components.config import build
from components.stage import RecordingLogger, StageIO
from components.vision.data.coco import CocoInstances, CocoObject
from components.vision.data.config import ImagesConfig
from components.vision.data.shapes import SHAPES
from components.vision.data.stage import STAGE
from components.vision.data.store import read_images

SIZE = 32


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    """A small shapes set with up to 4 objects an image, some overlapping."""
    out = tmp_path_factory.mktemp("coco") / "images"
    params = {
        "source": "shapes",
        "size": SIZE,
        "val_fraction": 0.25,
        "shapes": {"count": 60, "max_objects": 4, "scale": 0.7},
    }
    io_ = StageIO(inputs={}, outputs={"images": out}, log=RecordingLogger())
    STAGE.run(build(ImagesConfig, params), io_)
    return out


def _quiet_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.mark.parametrize("split", ["train", "val"])
def test_pycocotools_reads_the_images_boxes_and_categories(shapes_set, split):
    coco = _quiet_coco(shapes_set / f"instances_{split}.json")
    table = read_images(shapes_set / f"{split}.parquet")
    assert sorted(coco.getImgIds()) == sorted(table.ids.tolist()) and len(table) > 0
    categories = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"], c["supercategory"]) for c in categories] == [
        (i + 1, name, "shape") for i, name in enumerate(SHAPES)
    ]
    assert len(coco.getAnnIds()) == sum(len(objects) for objects in table.objects)
    for image_id, objects, labels in zip(table.ids, table.objects, table.labels, strict=True):
        image = coco.loadImgs([int(image_id)])[0]
        assert (image["width"], image["height"], image["file_name"]) == (
            SIZE,
            SIZE,
            f"{image_id}.png",
        )
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[int(image_id)]))
        assert [a["bbox"] for a in annotations] == [o["bbox"] for o in objects]
        assert [a["category_id"] - 1 for a in annotations] == labels
        assert [a["attributes"] for a in annotations] == [
            {"colour": o["colour"], "size": o["size"]} for o in objects
        ]
        for annotation in annotations:
            _, _, width, height = annotation["bbox"]
            assert 0 < annotation["area"] <= width * height and annotation["iscrowd"] == 0
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert ids == list(range(1, len(ids) + 1))


def _evaluate(coco: COCO, detections: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(detections), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats.tolist()


def test_the_ground_truth_as_detections_scores_ap_1(shapes_set):
    coco = _quiet_coco(shapes_set / "instances_train.json")
    truth = coco.dataset["annotations"]
    assert len({a["category_id"] for a in truth}) >= 5  # most classes take part
    detections = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in truth
    ]
    stats = _evaluate(coco, detections)
    assert stats[0] == stats[1] == stats[2] == 1.0  # AP @[.5:.95], @.5, @.75
    assert stats[8] == 1.0  # AR @100
    # The evaluation can fail: boxes shifted by a third of their width lose AP.
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] / 3, *d["bbox"][1:]]} for d in detections]
    assert _evaluate(coco, shifted)[0] < 0.5


def test_the_writer_numbers_annotations_and_refuses_unknown_labels(tmp_path):
    coco = CocoInstances(("circle", "square"), "shape", "tiny")
    coco.add_image(3, 32, 32, [CocoObject(1, (4, 5, 6, 7), 30, {"colour": "red"})])
    coco.add_image(5, 32, 16, [CocoObject(0, (0, 0, 2, 2), 4), CocoObject(1, (1, 1, 3, 3), 9)])
    data = coco.to_json()
    assert [(a["id"], a["image_id"], a["category_id"]) for a in data["annotations"]] == [
        (1, 3, 2),
        (2, 5, 1),
        (3, 5, 2),
    ]
    assert data["images"][1] == {"id": 5, "file_name": "5.png", "width": 32, "height": 16}
    assert data["info"] == {"description": "tiny", "version": "1"}
    coco.write(tmp_path / "a.json")
    coco.write(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == data
    with pytest.raises(ValueError, match="image 7: label 2 has no category"):
        coco.add_image(7, 32, 32, [CocoObject(2, (0, 0, 1, 1), 1)])
