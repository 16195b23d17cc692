import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from components.config import build
from components.detection.data.config import DetectionDataConfig
from components.detection.data.dataset import records_from_table
from components.detection.data.stage import STAGE
from components.stage import RecordingLogger, StageIO
from components.vision.data.store import read_images, read_meta


@pytest.mark.parametrize("source", ["shapes", "digits"])
def test_stage_stores_images_boxes_and_coco(source, tmp_path):
    config = build(DetectionDataConfig, {"source": source, "count": 40, "size": 64})
    log = RecordingLogger()
    result = STAGE.run(config, StageIO({}, {"images": tmp_path / "out"}, log=log))
    out = tmp_path / "out"
    metrics = result.metrics
    assert metrics["images"] == 40 == metrics["train_images"] + metrics["val_images"]
    assert metrics["classes"] == (7 if source == "shapes" else 10)
    assert read_meta(out).source == f"{source}-det" and [n for n, _, _ in log.images] == ["grid"]
    table = read_images(out / "val.parquet")
    records = records_from_table(table)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "instances_val.json"))
    assert sorted(coco.getImgIds()) == sorted(int(i) for i in table.ids)
    for record in records:
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[record.image_id]))
        assert [a["category_id"] - 1 for a in annotations] == record.labels.tolist()
        stored = np.array([a["bbox"] for a in annotations]).reshape(-1, 4)
        assert np.allclose(stored, record.boxes)
    total = len(coco.getAnnIds())
    assert total == sum(len(r.labels) for r in records) and total > 0
