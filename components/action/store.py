"""The stored streams and their features: one directory per split, one safetensors file per
stream.

    <dir>/meta.json                 {"format": "loom-streams", "version": 1, "classes",
                                     "size", "background": 0, "streams": {split: [entry]}}
                                    entry: {"file", "frames", "instances": [{label, action,
                                     start, end}]}
    <dir>/<split>/<i>.safetensors   "frames" uint8 [T, H, W, 3], "labels" int64 [T]

Features (stage extract_features) are stored alike, format "loom-action-features": meta adds
"dim" (and how they were made); each file holds "features" float32 [T, dim] and "labels".

`read_stream` / `read_features` check what a model will rely on: the labels are within the
classes, there is one per frame, the frames are the meta's size, the features its dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from components import artifact
from components.stage import StageInputError

FORMAT, VERSION = "loom-streams", 1
FEATURES_FORMAT = "loom-action-features"
META_FILE = "meta.json"


@dataclass
class StoredStream:
    frames: torch.Tensor  # uint8 [T, H, W, 3]
    labels: torch.Tensor  # int64 [T]
    instances: list[dict[str, Any]]
    path: Path


def stream_file(split: str, index: int) -> str:
    return f"{split}/{index:03d}.safetensors"


def write_stream(directory: Path, split: str, index: int, frames, labels) -> str:
    """Write one stream (numpy or torch arrays); returns its path relative to `directory`."""
    relative = stream_file(split, index)
    (directory / relative).parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "frames": torch.as_tensor(frames, dtype=torch.uint8).contiguous(),
        "labels": torch.as_tensor(labels, dtype=torch.int64).contiguous(),
    }
    save_file(tensors, directory / relative, metadata={"format": f"{FORMAT}/{VERSION}"})
    return relative


def write_meta(directory: Path, fields: dict[str, Any], kind: str = FORMAT) -> None:
    artifact.write_manifest(Path(directory) / META_FILE, kind, VERSION, fields, indent=1)


def read_meta(directory: Path, kind: str = FORMAT) -> dict[str, Any]:
    """meta.json's fields (the header checked: `kind`, VERSION; StageInputError otherwise)."""
    return artifact.read_manifest(Path(directory) / META_FILE, kind, VERSION)


def _load(path: Path, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as err:
        raise StageInputError(f"{path}: cannot read the stream: {err}") from None
    if any(name not in tensors for name in names):
        wanted = " and ".join(repr(n) for n in names)
        raise StageInputError(f"{path}: needs tensors {wanted} (has {sorted(tensors)})")
    return tensors[names[0]], tensors[names[1]]


def _check_labels(path: Path, labels: torch.Tensor, frames: int, classes: list[str]) -> None:
    if labels.shape != (frames,):
        count = labels.shape[0] if labels.ndim else 0
        raise StageInputError(f"{path}: {count} labels for {frames} frames")
    outside = labels[(labels < 0) | (labels >= len(classes))]
    if len(outside):
        raise StageInputError(
            f"{path}: label {int(outside[0])} is outside the {len(classes)} classes {classes}"
        )


def read_stream(directory: Path, meta: dict[str, Any], entry: dict[str, Any]) -> StoredStream:
    """One stream of `meta` back, checked (StageInputError naming the file)."""
    path = Path(directory) / entry["file"]
    frames, labels = _load(path, ("frames", "labels"))
    size = int(meta["size"])
    if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != (size, size, 3):
        raise StageInputError(
            f"{path}: frames {frames.dtype} {list(frames.shape)}, expected uint8 "
            f"[T, {size}, {size}, 3]"
        )
    _check_labels(path, labels, frames.shape[0], list(meta["classes"]))
    return StoredStream(frames, labels, list(entry.get("instances", [])), path)


@dataclass
class StoredFeatures:
    features: torch.Tensor  # float32 [T, dim]
    labels: torch.Tensor  # int64 [T]
    instances: list[dict[str, Any]]
    path: Path


def write_features(directory: Path, split: str, index: int, features, labels) -> str:
    relative = stream_file(split, index)
    (directory / relative).parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "features": torch.as_tensor(features, dtype=torch.float32).contiguous(),
        "labels": torch.as_tensor(labels, dtype=torch.int64).contiguous(),
    }
    metadata = {"format": f"{FEATURES_FORMAT}/{VERSION}"}
    save_file(tensors, directory / relative, metadata=metadata)
    return relative


def read_features(directory: Path, meta: dict[str, Any], entry: dict[str, Any]) -> StoredFeatures:
    """One stream's features back, checked (StageInputError naming the file)."""
    path = Path(directory) / entry["file"]
    features, labels = _load(path, ("features", "labels"))
    dim = int(meta["dim"])
    if features.ndim != 2 or features.shape[1] != dim or not features.is_floating_point():
        raise StageInputError(
            f"{path}: features {features.dtype} {list(features.shape)}, expected float "
            f"[T, {dim}] (the dim in {Path(directory) / META_FILE})"
        )
    _check_labels(path, labels, features.shape[0], list(meta["classes"]))
    return StoredFeatures(features, labels, list(entry.get("instances", [])), path)
