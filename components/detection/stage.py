"""Stage "detection.detector": train DETR on a stored detection data set.

Input "images": the store format with objects (stage "detection.data", or any set whose rows
carry boxes). Output "model": the `Detector` save directory (`saved.py`), logged and
registered as a model that answers `predict(images)` with COCO-style detections.

Live (MLflow while it trains): the loss terms per report (CE, L1, GIoU, their denoising
twins, class error, LR, gradient norms) and, at every validation, COCO AP / AP50 / AP75 on
`eval_images` val images ("eval/ap50"). Final metrics: COCOeval on the whole val set.
Checked before training: a train set smaller than one batch, no val images, and
`model.num_queries` below the most objects in one image (a set predictor cannot return more
objects than it has queries) are `StageInputError`s naming the file and key.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from components.detection.config import DetectorConfig
from components.detection.data.dataset import (
    DetectionDataset,
    collate,
    read_split,
)
from components.detection.evaluate import coco_metrics, ground_truth, results_json
from components.detection.model import Detr
from components.detection.postprocess import Detections, postprocess
from components.detection.saved import Detector
from components.detection.task import DetrTask
from components.stage import (
    Dataset,
    Output,
    ServedModel,
    Stage,
    StageInputError,
    StageIO,
    StageResult,
)
from components.train import distributed, train
from components.vision.data.store import read_meta

EVAL_BATCH = 32


def check_inputs(config: DetectorConfig, directory: Path, train, val) -> None:
    batch = config.train.batch_size
    if len(train) < batch:
        raise StageInputError(
            f"{directory / 'train.parquet'}: {len(train)} training images, fewer than one "
            f"batch (train.batch_size = {batch})"
        )
    if not val:
        raise StageInputError(f"{directory / 'val.parquet'}: no validation images")
    most = max(len(r.labels) for r in [*train, *val])
    queries = config.model.num_queries
    if most > queries:
        raise StageInputError(
            f"{directory}: an image holds {most} objects but model.num_queries = {queries}: "
            f"raise num_queries to at least {most}"
        )


@torch.no_grad()
def detect_records(network: Detr, records, top_k: int) -> list[Detections]:
    """Detections of `records` (pixel boxes), in their order, in eval mode."""
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    data = DetectionDataset(records)
    focal = network.config.loss.class_loss == "focal"
    found: list[Detections] = []
    for start in range(0, len(records), EVAL_BATCH):
        batch = collate([data[i] for i in range(start, min(start + EVAL_BATCH, len(records)))])
        out = network(batch.images.to(device), batch.mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in batch.targets]).to(device)
        found += postprocess(out["logits"], out["boxes"], sizes, top_k, focal)
    network.train(was_training)
    return found


def coco_scores(network: Detr, records, classes, top_k: int) -> dict[str, float]:
    found = detect_records(network, records, top_k)
    results = results_json([r.image_id for r in records], found)
    metrics, _ = coco_metrics(ground_truth(records, classes), results)
    return metrics


def _run(config: DetectorConfig, io: StageIO) -> StageResult:
    source = io.inputs["images"]
    meta = read_meta(source)
    train_records, val_records = read_split(source, "train"), read_split(source, "val")
    check_inputs(config, source, train_records, val_records)
    classes = meta.classes
    eval_records = val_records[: config.eval_images]

    def on_eval(model: torch.nn.Module, step: int) -> dict[str, float]:
        assert isinstance(model, Detr)
        scores = coco_scores(model, eval_records, classes, config.top_k)
        return {k: scores[k] for k in ("ap", "ap50", "ap75")}

    task = DetrTask(config, len(classes), train_records, val_records)
    started = time.perf_counter()
    result = train(task, config.train, io.work, on_metrics=io.log.log_metrics, on_eval=on_eval)
    seconds = time.perf_counter() - started
    datasets = [
        Dataset("images/train", source / "train.parquet", "train", len(train_records)),
        Dataset("images/val", source / "val.parquet", "val", len(val_records)),
    ]
    if not distributed.detect().is_main:
        return StageResult(datasets=datasets)
    network = result.ema if result.ema is not None else result.model
    assert isinstance(network, Detr)
    detector = Detector(network, classes, meta.size, config.top_k)
    detector.save(io.outputs["model"])
    metrics = coco_scores(network, val_records, classes, config.top_k)
    trained = result.step - (result.resumed_from or 0)
    metrics |= {
        "steps": float(result.step),
        "parameters": float(sum(p.numel() for p in network.parameters())),
        "train_seconds": seconds,
        "train_images_per_second": trained * config.train.batch_size / max(seconds, 1e-9),
    }
    datasets.append(Dataset("model", Output("model"), "output"))
    return StageResult(metrics=metrics, datasets=datasets)


STAGE = Stage(
    name="detection.detector",
    version="1",
    config=DetectorConfig,
    inputs=("images",),
    outputs=("model",),
    run=_run,
    key_metrics=("ap", "ap50"),
    distributed=True,
    models=(
        ServedModel(
            role="model",
            loader="components.detection.serve:load",  # predict(images) -> detections
            requirements=(
                "numpy",
                "pyarrow",
                "pycocotools",
                "safetensors",
                "scipy",
                "torch",
                "tqdm",
            ),
        ),
    ),
)
