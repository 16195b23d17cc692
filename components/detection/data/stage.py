"""Stage "detection.data": a generated detection data set (shapes-det or digits-det), stored
in the image store format so the vision and detection pipelines read one format.

Output "images": train.parquet / val.parquet (PNG bytes; `objects` [{"label", "bbox" xywh,
"area"}] and `labels` per image), meta.json, grid.png, and instances_{train,val}.json (COCO:
category id = label + 1; pycocotools loads them).
"""

from __future__ import annotations

from components.detection.data import synthetic
from components.detection.data.config import DetectionDataConfig
from components.stage import Output, Stage, StageIO, StageResult
from components.vision.data.coco import CocoInstances, CocoObject
from components.vision.data.store import SPLITS, ImagesWriter, split_datasets


def _run(config: DetectionDataConfig, io: StageIO) -> StageResult:
    out = io.outputs["images"]
    classes = synthetic.class_names(config)
    coco = {split: CocoInstances(classes, config.source, f"{config.source}-det {split}")
            for split in SPLITS}  # fmt: skip
    objects = 0
    writer = ImagesWriter(out, size=config.size, channels=3, val_fraction=config.val_fraction,
                          split_seed=config.split_seed)  # fmt: skip
    with writer:
        for index, split, image in synthetic.generate(config):
            stored = writer.add(synthetic.store_record(config, index, image))
            assert stored == split, f"image {index}: stored in {stored}, drawn for {split}"
            boxes = [
                CocoObject(o.label, (x, y, w, h), o.area)
                for o in image.objects
                for x, y, w, h in [o.bbox]
            ]
            coco[split].add_image(index, config.size, config.size, boxes)
            objects += len(boxes)
        written = writer.finish(f"{config.source}-det", classes)
    for split, instances in coco.items():
        instances.write(out / f"instances_{split}.json")
    counts = written.meta.counts
    io.log.log_image("grid", 0, written.grid)
    return StageResult(
        metrics={
            "images": float(sum(counts.values())),
            "train_images": float(counts["train"]),
            "val_images": float(counts["val"]),
            "objects": float(objects),
            "objects_per_image": objects / max(sum(counts.values()), 1),
            "classes": float(len(classes)),
        },
        artifacts=[Output("images", "grid.png"), Output("images", "meta.json")],
        datasets=split_datasets("images", counts),
    )


STAGE = Stage(
    name="detection.data",
    version="1",
    config=DetectionDataConfig,
    inputs=(),
    outputs=("images",),
    run=_run,
    key_metrics=("train_images", "objects_per_image"),
)
