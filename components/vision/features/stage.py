"""Stage "vision.feature_net": the evaluation feature network, trained on the real images.

Input "images": an image store (stage "vision.images"): digits train a class head from their
labels, shapes train shape / colour / size / count heads read from their captions (`heads`).
Output "model": a `FeatureNet` directory. Metrics: on the val images, the share predicted
exactly right per head and on every head ("accuracy": what a generator that drew every
prompt perfectly would score on prompt accuracy, the judge's own ceiling).
"""

from __future__ import annotations

import time

import torch

from components.stage import Dataset, Output, Stage, StageInputError, StageIO, StageResult
from components.train import distributed, train
from components.vision.data.store import read_images, read_meta
from components.vision.features.config import FeatureNetConfig
from components.vision.features.heads import Head, agreement, expected, heads_for, targets
from components.vision.features.model import FeatureNetwork
from components.vision.features.saved import FeatureNet
from components.vision.features.task import FeatureTask, LabelledImages


def _labelled(heads: tuple[Head, ...], table, where) -> tuple[LabelledImages, list]:
    try:
        wanted = [
            expected(heads, c, labels)
            for c, labels in zip(table.captions, table.labels, strict=True)
        ]
        return LabelledImages(torch.from_numpy(table.images), targets(heads, wanted)), wanted
    except ValueError as err:
        raise StageInputError(f"{where}: {err}") from None


def _max_objects(source: str, captions: list[str]) -> int:
    if source != "shapes":
        return 0
    from components.vision.data.shapes import parse_caption

    return max(len(parse_caption(c).objects) for c in captions)


def _run(config: FeatureNetConfig, io: StageIO) -> StageResult:
    source = io.inputs["images"]
    meta = read_meta(source)
    train_table = read_images(source / "train.parquet")
    val_table = read_images(source / "val.parquet")
    if len(train_table) < config.train.batch_size:
        raise StageInputError(
            f"{source / 'train.parquet'}: {len(train_table)} images, fewer than one batch "
            f"(train.batch_size = {config.train.batch_size})"
        )
    try:
        max_objects = _max_objects(meta.source, train_table.captions)
        heads = heads_for(meta.source, meta.classes, max_objects)
    except ValueError as err:
        raise StageInputError(f"{source / 'train.parquet'}: {err}") from None
    train_data, _ = _labelled(heads, train_table, source / "train.parquet")
    val_data, val_wanted = _labelled(heads, val_table, source / "val.parquet")
    task = FeatureTask(config, heads, meta.channels, meta.size, train_data, val_data)
    started = time.perf_counter()
    result = train(task, config.train, io.work, on_metrics=io.log.log_metrics)
    seconds = time.perf_counter() - started
    datasets = [
        Dataset("images/train", source / "train.parquet", "train", len(train_table)),
        Dataset("images/val", source / "val.parquet", "val", len(val_table)),
    ]
    if not distributed.detect().is_main:
        return StageResult(datasets=datasets)
    network = result.model
    assert isinstance(network, FeatureNetwork)
    net = FeatureNet(network.to("cpu").eval(), meta.size)
    net.save(io.outputs["model"])
    metrics: dict[str, float] = {}
    if len(val_table):
        scores = agreement(net.predict(val_table.images), val_wanted)
        metrics = {"accuracy": scores.pop("all")} | {f"accuracy/{k}": v for k, v in scores.items()}
    metrics |= {
        "parameters": float(sum(p.numel() for p in network.parameters())),
        "steps": float(result.step),
        "train_seconds": seconds,
    }
    datasets.append(Dataset("model", Output("model"), "output"))
    return StageResult(metrics=metrics, datasets=datasets)


STAGE = Stage(
    name="vision.feature_net",
    version="1",
    config=FeatureNetConfig,
    inputs=("images",),
    outputs=("model",),
    run=_run,
    key_metrics=("accuracy",),
    distributed=True,
)
