"""Stage "action.extract_features": every stream's per-frame features from the vision
pipeline's trained autoencoder (`features`).

Inputs: "streams" (stage action_streams) and "autoencoder" (a `vision.autoencoder` output on
images of the streams' size and channels). Output "features": the features store (`store`,
format loom-action-features), the streams' labels and instances carried over.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from components.action.config import ActionFeaturesConfig
from components.action.features import feature_dim, frame_features
from components.action.store import (
    FEATURES_FORMAT,
    read_meta,
    read_stream,
    write_features,
    write_meta,
)
from components.device import select_device
from components.stage import Dataset, Output, Stage, StageInputError, StageIO, StageResult
from components.vision.autoencoder.saved import Autoencoder


def _run(config: ActionFeaturesConfig, io: StageIO) -> StageResult:
    source, model_dir = io.inputs["streams"], io.inputs["autoencoder"]
    meta = read_meta(source)
    device = select_device(config.device, key="runtime.extract_features.device")
    autoencoder = Autoencoder.load(model_dir, device=device)
    size = int(meta["size"])
    if (autoencoder.image_size, autoencoder.image_channels) != (size, 3):
        raise StageInputError(
            f"{model_dir}: an autoencoder of {autoencoder.image_size} px × "
            f"{autoencoder.image_channels} channels, but the streams of {source} are {size} px "
            "RGB frames"
        )
    dim = feature_dim(autoencoder, config.pool, config.motion)
    out = io.outputs["features"]
    out.mkdir(parents=True)
    entries: dict[str, list[dict]] = {}
    frames = 0
    started = time.perf_counter()
    total = sum(len(streams) for streams in meta["streams"].values())
    bar = tqdm(total=total, desc="extract_features", unit="stream", disable=not config.progress)
    for split, streams in meta["streams"].items():
        entries[split] = []
        for index, entry in enumerate(streams):
            bar.update()
            stream = read_stream(source, meta, entry)
            features = frame_features(
                autoencoder, stream.frames, config.pool, config.motion, config.batch_size
            )
            file = write_features(out, split, index, features, stream.labels)
            entries[split].append({**entry, "file": file})
            frames += len(stream.labels)
    bar.close()
    seconds = time.perf_counter() - started
    fields = {"classes": meta["classes"], "background": meta["background"], "dim": dim,
              "pool": config.pool, "motion": config.motion, "streams": entries}  # fmt: skip
    write_meta(out, fields, FEATURES_FORMAT)
    metrics = {"dim": float(dim), "frames": float(frames), "frames_per_second": frames / seconds}
    datasets = [
        Dataset("streams", source, "input"),
        Dataset("features", Output("features"), "output"),
    ]
    return StageResult(
        metrics=metrics, artifacts=[Output("features", "meta.json")], datasets=datasets
    )


STAGE = Stage(
    name="action.extract_features",
    version="1",
    config=ActionFeaturesConfig,
    inputs=("streams", "autoencoder"),
    outputs=("features",),
    run=_run,
    key_metrics=("dim", "frames"),
)
