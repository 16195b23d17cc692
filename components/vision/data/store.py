"""The on-disk image data set: one Parquet file per split, meta.json and grid.png.

    <dir>/train.parquet, val.parquet   one row per image:
        id       int64          the image's id (generated: its index; folder: file position)
        image    binary         PNG bytes, 8-bit grey (1 channel) or RGB (3)
        caption  string         "" where there is none
        labels   list<int64>    class ids into meta.json "classes" (digits: [digit];
                                shapes: the objects' shape ids; folder: [])
        width    int32          pixels
        height   int32
        objects  string         JSON [{"shape", "colour", "size", "bbox": [x, y, w, h]}]; "[]"
        key      string         what the split hashes: "mnist_5k/<row>", "shapes/<index>",
                                or the file's relative path
      Schema metadata: loom.format "loom-images", loom.version, loom.shape "[H, W, C]".
    <dir>/meta.json    {"format", "version", "source", "size", "channels", "classes",
                        "counts": {"train", "val"}}
    <dir>/grid.png     the first images (by id), 8 per row

An image goes to val iff blake2b(key, salt=split_seed) mod 10_000 < val_fraction · 10_000
(`split_of`): its split depends on its key alone, so adding images never moves others.
Identical inputs give identical bytes (fixed row groups, PNG without metadata, no times).

    with ImagesWriter(out, size=32, channels=1, val_fraction=0.1, split_seed=0) as writer:
        for record in records:
            writer.add(record)                       # -> "train" | "val"
    summary = writer.finish(source="digits", classes=DIGIT_NAMES)
    table = read_images(out / "train.parquet")       # images uint8 [N, 32, 32, 1]
    meta = read_meta(out)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.inputs import open_parquet, parquet_batches, read_json
from components.stage import Dataset, Output, StageInputError
from components.vision.grid import decode_png, image_grid, png_bytes

log = logging.getLogger(__name__)

FORMAT = "loom-images"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
META_FILE = "meta.json"
GRID_FILE = "grid.png"
GRID_COLUMNS = 8
SPLIT_BUCKETS = 10_000
ROW_GROUP_ROWS = 1024
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("image", pa.binary()),
        ("caption", pa.string()),
        ("labels", pa.list_(pa.int64())),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("objects", pa.string()),
        ("key", pa.string()),
    ]
)


@dataclass(frozen=True)
class ImageRecord:
    """One image to store: uint8 [H, W, C] pixels (C = 1 or 3) and what goes with them."""

    id: int
    key: str  # the split key (see the module doc)
    image: np.ndarray
    caption: str
    labels: tuple[int, ...]
    objects: tuple[dict[str, Any], ...] = ()  # JSON-able, e.g. ShapeObject.to_json()


@dataclass
class ImageTable:
    """One split read back: images uint8 [N, H, W, C] (C = 1 or 3), ids int64 [N], and per
    image its caption, labels, objects (parsed JSON) and split key."""

    images: np.ndarray
    ids: np.ndarray
    captions: list[str]
    labels: list[list[int]]
    objects: list[list[dict[str, Any]]]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ImagesMeta:
    """meta.json: where the images come from and their shape (size × size × channels)."""

    source: str  # "digits" | "shapes" | "folder"
    size: int
    channels: int  # 1 (grey) or 3 (RGB)
    classes: tuple[str, ...]  # label id -> name
    counts: dict[str, int]  # split -> images


@dataclass
class WrittenImages:
    meta: ImagesMeta
    grid: np.ndarray  # uint8 [H', W', 3], as written to grid.png


def split_of(key: str, val_fraction: float, seed: int) -> str:
    """ "train" or "val" for the image whose split key is `key` (see the module doc)."""
    salt = seed.to_bytes(16, "little")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, salt=salt).digest()
    bucket = int.from_bytes(digest, "little") % SPLIT_BUCKETS
    return "val" if bucket < round(val_fraction * SPLIT_BUCKETS) else "train"


class ImagesWriter:
    """Writes records to train/val Parquet as they come (bounded memory), then meta.json and
    grid.png on `finish`. Records of one set share size × size × channels."""

    def __init__(
        self,
        out_dir: Path,
        *,
        size: int,
        channels: int,
        val_fraction: float,
        split_seed: int,
        grid: int = 64,
    ):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.shape = out_dir, (size, size, channels)
        self.val_fraction, self.split_seed, self.grid_size = val_fraction, split_seed, grid
        schema = SCHEMA.with_metadata(
            {
                "loom.format": FORMAT,
                "loom.version": str(FORMAT_VERSION),
                "loom.shape": json.dumps(list(self.shape)),
            }
        )
        self.splits = {
            split: _SplitWriter(out_dir / f"{split}.parquet", schema) for split in SPLITS
        }
        self.grid: list[np.ndarray] = []

    def add(self, record: ImageRecord) -> str:
        """Store `record` in its split; returns the split."""
        if record.image.shape != self.shape or record.image.dtype != np.uint8:
            raise ValueError(
                f"image {record.id}: {record.image.dtype} {record.image.shape}, "
                f"expected uint8 {self.shape}"
            )
        split = split_of(record.key, self.val_fraction, self.split_seed)
        self.splits[split].add(record)
        if len(self.grid) < self.grid_size:
            self.grid.append(record.image)
        return split

    def close(self) -> None:
        for writer in self.splits.values():
            writer.close()

    def finish(self, source: str, classes: Sequence[str]) -> WrittenImages:
        """Close the Parquet files, write meta.json and grid.png. StageInputError when no image
        was added or none fell in train; a warning when val is empty."""
        self.close()
        counts = {split: writer.rows for split, writer in self.splits.items()}
        if not self.grid:
            raise StageInputError("no images to write")
        if counts["train"] == 0:
            raise StageInputError(
                f"no image in train ({counts['val']} images, all in val): add images or "
                "lower val_fraction"
            )
        if counts["val"] == 0:
            log.warning(
                "no image fell in val out of %d (val_fraction %s)",
                counts["train"],
                self.val_fraction,
            )
        size, _, channels = self.shape
        meta = ImagesMeta(source, size, channels, tuple(classes), counts)
        meta_json = {"format": FORMAT, "version": FORMAT_VERSION, **asdict(meta)}
        meta_json["classes"] = list(classes)
        (self.out_dir / META_FILE).write_text(json.dumps(meta_json, indent=2) + "\n")
        grid = image_grid(np.stack(self.grid), columns=GRID_COLUMNS)
        (self.out_dir / GRID_FILE).write_bytes(png_bytes(grid))
        return WrittenImages(meta, grid)

    def __enter__(self) -> ImagesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _SplitWriter:
    path: Path
    schema: pa.Schema
    rows: int = 0
    buffer: list[ImageRecord] = field(default_factory=list)
    writer: pq.ParquetWriter | None = None

    def __post_init__(self) -> None:
        # PNG bytes are compressed already; the repetitive captions and objects are not.
        self.writer = pq.ParquetWriter(
            self.path,
            self.schema,
            compression="zstd",
            use_dictionary=["caption", "objects"],
            write_statistics=["id"],
        )

    def add(self, record: ImageRecord) -> None:
        self.buffer.append(record)
        self.rows += 1
        if len(self.buffer) >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.buffer and self.writer is not None:
            self.writer.write_table(_table(self.buffer, self.schema), row_group_size=ROW_GROUP_ROWS)
            self.buffer = []

    def close(self) -> None:
        if self.writer is not None:
            self.flush()
            self.writer.close()
            self.writer = None


def _table(records: list[ImageRecord], schema: pa.Schema) -> pa.Table:
    columns = {
        "id": [r.id for r in records],
        "image": [png_bytes(r.image) for r in records],
        "caption": [r.caption for r in records],
        "labels": [list(r.labels) for r in records],
        "width": [r.image.shape[1] for r in records],
        "height": [r.image.shape[0] for r in records],
        "objects": [json.dumps(list(r.objects), separators=(",", ":")) for r in records],
        "key": [r.key for r in records],
    }
    return pa.table(columns, schema=schema)


def split_datasets(role: str, counts: dict[str, int]) -> list[Dataset]:
    """The train and val Parquet files of output `role`, as the stage's MLflow datasets."""
    return [
        Dataset(f"{role}-{split}", Output(role, f"{split}.parquet"), split, counts[split])
        for split in SPLITS
    ]


def read_images(path: Path) -> ImageTable:
    """One split file back as arrays. StageInputError naming `path` for a missing or corrupt
    file, a missing column, an undecodable PNG, or images of differing shapes."""
    path = Path(path)
    file = open_parquet(path)
    with file:
        names = file.schema_arrow.names
        missing = [name for name in SCHEMA.names if name not in names]
        if missing:
            raise StageInputError(f"{path}: no column(s) {missing} (columns: {names})")
        shape = _stored_shape(file, path)
        columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        for batch in parquet_batches(file, path, batch_size=ROW_GROUP_ROWS):
            for name, values in columns.items():
                values += batch.column(name).to_pylist()
    pngs = zip(columns["image"], columns["id"], strict=True)
    images = [_decode(data, image_id, path) for data, image_id in pngs]
    if shape is None and not images:
        raise StageInputError(f"{path}: no rows and no loom.shape metadata: no image shape")
    shape = shape or images[0].shape
    for image, image_id in zip(images, columns["id"], strict=True):
        if image.shape != shape:
            raise StageInputError(f"{path}: image id {image_id} is {image.shape}, not {shape}")
    try:
        objects = [json.loads(text) for text in columns["objects"]]
    except (TypeError, json.JSONDecodeError) as err:
        raise StageInputError(f"{path}: column 'objects' holds invalid JSON: {err}") from None
    return ImageTable(
        images=np.stack(images) if images else np.zeros((0, *shape), np.uint8),
        ids=np.asarray(columns["id"], np.int64),
        captions=[caption or "" for caption in columns["caption"]],
        labels=[list(labels or []) for labels in columns["labels"]],
        objects=objects,
        keys=columns["key"],
    )


def read_meta(directory: Path) -> ImagesMeta:
    """`directory / meta.json`; StageInputError naming it if missing, malformed or not this
    format."""
    path = Path(directory) / META_FILE
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StageInputError(f"{path}: not a {FORMAT} meta.json")
    if data.get("version") != FORMAT_VERSION:
        raise StageInputError(f"{path}: version {data.get('version')!r}, expected {FORMAT_VERSION}")
    try:
        counts = {split: int(data["counts"][split]) for split in SPLITS}
        meta = ImagesMeta(
            source=str(data["source"]),
            size=int(data["size"]),
            channels=int(data["channels"]),
            classes=tuple(str(name) for name in data["classes"]),
            counts=counts,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise StageInputError(f"{path}: missing or malformed field: {err!r}") from None
    if meta.channels not in (1, 3):
        raise StageInputError(f"{path}: channels {meta.channels}, expected 1 or 3")
    return meta


def _stored_shape(file: pq.ParquetFile, path: Path) -> tuple[int, ...] | None:
    metadata = file.schema_arrow.metadata or {}
    if metadata.get(b"loom.format", FORMAT.encode()) != FORMAT.encode():
        raise StageInputError(
            f"{path}: not a {FORMAT} file (loom.format {metadata[b'loom.format']!r})"
        )
    version = metadata.get(b"loom.version")
    if version is not None and version != str(FORMAT_VERSION).encode():
        raise StageInputError(
            f"{path}: {FORMAT} version {version.decode()}, expected {FORMAT_VERSION}"
        )
    shape = metadata.get(b"loom.shape")
    return tuple(json.loads(shape)) if shape else None


def _decode(data: bytes | None, image_id: int, path: Path) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, C]."""
    try:
        image = decode_png(data or b"")
    except (OSError, ValueError, SyntaxError) as err:
        raise StageInputError(f"{path}: image id {image_id} is not a readable PNG: {err}") from None
    return image[..., None] if image.ndim == 2 else image
