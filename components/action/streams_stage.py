"""Stage "action.streams": the generated streams of every split, stored (`store`).

Output "streams": the store directory, and preview.png: the first frames of each action class
(one row per class: its first instance's frames from two before its start), for a look at
what the classes look like. Metrics: frames and instances per split, the background share.
"""

from __future__ import annotations

import numpy as np

from components.action.config import StreamsConfig
from components.action.store import write_meta, write_stream
from components.action.streams import ACTIONS, BACKGROUND, SPLITS, Stream, render_stream
from components.stage import Dataset, Output, Stage, StageIO, StageResult
from components.vision.grid import image_grid, png_bytes

PREVIEW_FRAMES = 12


def _counts(config: StreamsConfig) -> dict[str, int]:
    return {
        "train": config.train_streams,
        "val": config.val_streams,
        "test": config.test_streams,
    }


def preview(streams: list[Stream]) -> np.ndarray:
    """uint8 grid: per action class, PREVIEW_FRAMES frames from two before its first instance."""
    rows = []
    for label in range(1, len(ACTIONS)):
        for stream in streams:
            found = [i for i in stream.instances if i.label == label and i.start >= 2]
            if found:
                start = found[0].start - 2
                rows.append(stream.frames[start : start + PREVIEW_FRAMES])
                break
    return image_grid(np.concatenate(rows), columns=PREVIEW_FRAMES)


def _run(config: StreamsConfig, io: StageIO) -> StageResult:
    out = io.outputs["streams"]
    out.mkdir(parents=True)
    entries: dict[str, list[dict]] = {}
    metrics: dict[str, float] = {}
    first: list[Stream] = []
    background = frames = 0
    for split, count in _counts(config).items():
        entries[split] = []
        for index in range(count):
            stream = render_stream(config, split, index)
            if split == "train":
                first.append(stream)
            file = write_stream(out, split, index, stream.frames, stream.labels)
            instances = [i.to_json() for i in stream.instances]
            entries[split].append(
                {"file": file, "frames": len(stream.labels), "instances": instances}
            )
            background += int((stream.labels == BACKGROUND).sum())
            frames += len(stream.labels)
        metrics[f"{split}_frames"] = float(sum(e["frames"] for e in entries[split]))
        metrics[f"{split}_instances"] = float(sum(len(e["instances"]) for e in entries[split]))
    write_meta(out, {"classes": list(ACTIONS), "size": config.size, "background": BACKGROUND,
                     "streams": entries})  # fmt: skip
    grid = preview(first)
    (out / "preview.png").write_bytes(png_bytes(grid))
    io.log.log_image("preview", 0, grid)
    metrics["background_share"] = background / frames
    datasets = [
        Dataset(
            f"streams-{split}", Output("streams", split), split, int(metrics[f"{split}_frames"])
        )
        for split in SPLITS
    ]
    return StageResult(
        metrics=metrics,
        artifacts=[Output("streams", "preview.png"), Output("streams", "meta.json")],
        datasets=datasets,
    )


STAGE = Stage(
    name="action.streams",
    version="1",
    config=StreamsConfig,
    inputs=(),
    outputs=("streams",),
    run=_run,
    key_metrics=("train_frames", "train_instances"),
)
