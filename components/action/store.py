"""The stored streams: one directory per split, one safetensors file per stream.

    <dir>/meta.json                 {"format": "loom-streams", "version": 1, "classes",
                                     "size", "background": 0, "streams": {split: [entry]}}
                                    entry: {"file", "frames", "instances": [{label, action,
                                     start, end}]}
    <dir>/<split>/<i>.safetensors   "frames" uint8 [T, H, W, 3], "labels" int64 [T]

`read_stream` checks what a model will rely on: the labels are within the classes, there is
one per frame, and the frames are the meta's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from components.inputs import read_json
from components.stage import StageInputError

FORMAT, VERSION = "loom-streams", 1
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


def write_meta(directory: Path, fields: dict[str, Any]) -> None:
    document = {"format": FORMAT, "version": VERSION, **fields}
    (directory / META_FILE).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise StageInputError(f"{path}: not a {FORMAT} meta file (format {found!r})")
    if meta.get("version") != VERSION:
        raise StageInputError(f"{path}: {FORMAT} version {meta.get('version')}, expected {VERSION}")
    return meta


def read_stream(directory: Path, meta: dict[str, Any], entry: dict[str, Any]) -> StoredStream:
    """One stream of `meta` back, checked (StageInputError naming the file)."""
    path = Path(directory) / entry["file"]
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as err:
        raise StageInputError(f"{path}: cannot read the stream: {err}") from None
    frames, labels = tensors.get("frames"), tensors.get("labels")
    if frames is None or labels is None:
        raise StageInputError(
            f"{path}: needs tensors 'frames' and 'labels' (has {sorted(tensors)})"
        )
    size, classes = int(meta["size"]), len(meta["classes"])
    if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != (size, size, 3):
        raise StageInputError(
            f"{path}: frames {frames.dtype} {list(frames.shape)}, expected uint8 "
            f"[T, {size}, {size}, 3]"
        )
    if labels.shape != (frames.shape[0],):
        raise StageInputError(
            f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {frames.shape[0]} frames"
        )
    outside = labels[(labels < 0) | (labels >= classes)]
    if len(outside):
        raise StageInputError(
            f"{path}: label {int(outside[0])} is outside the {classes} classes {meta['classes']}"
        )
    return StoredStream(frames, labels, list(entry.get("instances", [])), path)
