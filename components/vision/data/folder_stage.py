"""Stage "vision.image_folder": any folder of PNG/JPEG files as a stored image data set.

Input "folder": a directory of images (recursive; see `folder` for the fit, caption,
bad-image and channel policies). Output "images": a new directory in the store format
(`store`): train.parquet, val.parquet, meta.json (source "folder", no classes), grid.png.
"""

from __future__ import annotations

from components.stage import Output, Stage, StageIO, StageResult
from components.vision.data.config import FolderImagesConfig
from components.vision.data.folder import FolderReport, read_folder
from components.vision.data.store import ImagesWriter, split_datasets


def _run(config: FolderImagesConfig, io: StageIO) -> StageResult:
    report = FolderReport()
    writer = ImagesWriter(
        io.outputs["images"],
        size=config.size,
        channels=3 if config.mode == "rgb" else 1,
        val_fraction=config.val_fraction,
        split_seed=config.split_seed,
        grid=config.grid,
    )
    with writer:
        for record in read_folder(io.inputs["folder"], config, report):
            writer.add(record)
        written = writer.finish("folder", classes=())
    counts = written.meta.counts
    io.log.log_image("grid", 0, written.grid)
    return StageResult(
        metrics={
            "train_images": float(counts["train"]),
            "val_images": float(counts["val"]),
            **report.metrics(),
        },
        artifacts=[Output("images", "grid.png"), Output("images", "meta.json")],
        datasets=split_datasets("images", counts),
    )


STAGE = Stage(
    name="vision.image_folder",
    version="1",
    config=FolderImagesConfig,
    inputs=("folder",),
    outputs=("images",),
    run=_run,
    key_metrics=("train_images", "val_images", "bad_images_skipped"),
)
