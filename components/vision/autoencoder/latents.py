"""The encoded data set a latent diffusion model trains on: scaled latents and their captions.

<dir>/train.safetensors, val.safetensors
    latents  float32 [N, c, h, w]   scaled (`Autoencoder.encode`: unit variance)
    ids      int64 [N]              the images' ids in the images data set
    metadata {"format": "loom-latents/1"}
<dir>/train.parquet, val.parquet    row i describes latents[i]: id int64, caption string,
                                    labels list<int64>, objects string (JSON)
<dir>/meta.json  {"format", "version", "kind", "scale_factor", "latent_shape",
                  "image_size", "image_channels", "posterior", "classes", "source",
                  "counts": {"train", "val"}}

write_latents(out, "train", latents, table)         # table: the split's ImageTable
split = read_latents(out, "train")                  # .latents, .ids, .captions, .labels
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from components import artifact
from components.inputs import open_parquet, parquet_batches
from components.stage import StageInputError
from components.vision.data.store import ImageTable

FORMAT, VERSION = "loom-latents", 1
META_FILE = "meta.json"
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("caption", pa.string()),
        ("labels", pa.list_(pa.int64())),
        ("objects", pa.string()),
    ]
)


@dataclass
class LatentSplit:
    latents: torch.Tensor  # float32 [N, c, h, w], scaled
    ids: torch.Tensor  # int64 [N]
    captions: list[str]
    labels: list[list[int]]
    objects: list[list[dict[str, Any]]]

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def write_latents(directory: Path, split: str, latents: torch.Tensor, table: ImageTable) -> None:
    """latents float32 [N, c, h, w] of the N images of `table`, in its order."""
    if latents.shape[0] != len(table):
        raise ValueError(f"{split}: {latents.shape[0]} latents for {len(table)} images")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "latents": latents.detach().float().cpu().contiguous(),
        "ids": torch.as_tensor(table.ids, dtype=torch.int64),
    }
    save_file(
        tensors, directory / f"{split}.safetensors", metadata={"format": f"{FORMAT}/{VERSION}"}
    )
    rows = pa.table(
        {
            "id": pa.array(table.ids, pa.int64()),
            "caption": pa.array(table.captions, pa.string()),
            "labels": pa.array(table.labels, pa.list_(pa.int64())),
            "objects": pa.array([json.dumps(o) for o in table.objects], pa.string()),
        },
        schema=SCHEMA,
    )
    pq.write_table(rows, directory / f"{split}.parquet")


def write_meta(directory: Path, fields: dict[str, Any]) -> None:
    artifact.write_manifest(Path(directory) / META_FILE, FORMAT, VERSION, fields)


def read_meta(directory: Path) -> dict[str, Any]:
    """meta.json's fields (the header checked; StageInputError naming the file otherwise)."""
    return artifact.read_manifest(Path(directory) / META_FILE, FORMAT, VERSION)


def read_latents(directory: Path, split: str) -> LatentSplit:
    tensors_path = directory / f"{split}.safetensors"
    try:
        tensors = load_file(tensors_path)
    except (OSError, SafetensorError) as err:
        raise StageInputError(f"{tensors_path}: cannot read latents: {err}") from None
    missing = {"latents", "ids"} - set(tensors)
    if missing:
        raise StageInputError(f"{tensors_path}: no tensors {sorted(missing)}")
    latents, ids_tensor = tensors["latents"], tensors["ids"]
    if latents.ndim != 4 or ids_tensor.shape != (latents.shape[0],):
        raise StageInputError(
            f"{tensors_path}: latents {tuple(latents.shape)} and ids {tuple(ids_tensor.shape)}: "
            "expected [N, c, h, w] and [N]"
        )
    rows_path = directory / f"{split}.parquet"
    with open_parquet(rows_path) as file:
        absent = [name for name in SCHEMA.names if name not in file.schema_arrow.names]
        if absent:
            raise StageInputError(f"{rows_path}: no column(s) {absent}")
        batches = list(parquet_batches(file, rows_path))
        rows = pa.Table.from_batches(batches, schema=file.schema_arrow)
    ids = rows.column("id").to_pylist()
    if ids != tensors["ids"].tolist():
        raise StageInputError(f"{rows_path}: ids do not match those of {tensors_path.name}")
    return LatentSplit(
        tensors["latents"],
        tensors["ids"],
        rows.column("caption").to_pylist(),
        rows.column("labels").to_pylist(),
        [json.loads(o) for o in rows.column("objects").to_pylist()],
    )
