"""Stage "action.train": an online action detector on the extracted features.

Input "features" (stage extract_features). Output "model": an `ActionDetector` directory.
Trained through the one engine (resume after a kill, checkpoints in the work dir) on the
train streams, validated on the val streams; metrics: the val loss and accuracy, and the val
streams' per-frame mAP (background excluded) and cAP, computed online-equivalent (each frame
from its past). A features file whose dim is not the meta's, labels outside the classes, or
streams shorter than a training chunk are refused naming the file.
"""

from __future__ import annotations

import time

import torch

from components.action.metrics import frame_map
from components.action.saved import ActionDetector
from components.action.store import FEATURES_FORMAT, read_features, read_meta
from components.action.task import ActionTask
from components.action.train_config import TrainActionConfig
from components.stage import Dataset, Output, Stage, StageInputError, StageIO, StageResult
from components.train import distributed, train


def read_split(directory, meta: dict, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(features [N, D], labels [N]) of every stream of `split`."""
    streams = meta["streams"].get(split, [])
    return [
        (stored.features, stored.labels)
        for stored in (read_features(directory, meta, entry) for entry in streams)
    ]


def _run(config: TrainActionConfig, io: StageIO) -> StageResult:
    source = io.inputs["features"]
    meta = read_meta(source, FEATURES_FORMAT)
    train_streams, val_streams = read_split(source, meta, "train"), read_split(source, meta, "val")
    if not train_streams:
        raise StageInputError(f"{source / 'meta.json'}: no train streams")
    classes = list(meta["classes"])
    try:
        task = ActionTask(config, int(meta["dim"]), len(classes), train_streams, val_streams)
    except ValueError as err:
        raise StageInputError(f"{source}: {err}") from None
    started = time.perf_counter()
    result = train(task, config.train, io.work, on_metrics=io.log.log_metrics)
    seconds = time.perf_counter() - started
    frames = sum(len(labels) for _, labels in train_streams)
    datasets = [Dataset("features", source, "input", frames)]
    if not distributed.detect().is_main:
        return StageResult(datasets=datasets)
    detector = ActionDetector(result.model.to("cpu").eval(), classes)
    detector.save(io.outputs["model"])
    metrics = {k.removeprefix("val/"): v for k, v in result.metrics.items() if k.startswith("val/")}
    if val_streams:
        probs = torch.cat([detector.probabilities(f) for f, _ in val_streams]).numpy()
        labels = torch.cat([lab for _, lab in val_streams]).numpy()
        scores = frame_map(probs, labels, classes, int(meta["background"]))
        metrics |= {"val_map": scores["map"], "val_cmap": scores["cmap"]}
    metrics |= {
        "parameters": float(sum(p.numel() for p in detector.network.parameters())),
        "steps": float(result.step),
        "train_seconds": seconds,
    }
    datasets.append(Dataset("model", Output("model"), "output"))
    return StageResult(metrics=metrics, datasets=datasets)


STAGE = Stage(
    name="action.train",
    version="1",
    config=TrainActionConfig,
    inputs=("features",),
    outputs=("model",),
    run=_run,
    key_metrics=("val_map", "val_cmap"),
    distributed=True,
)
