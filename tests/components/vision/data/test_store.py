"""The image store: Parquet round trip, the hash split, reproducible bytes, bad files."""

import json
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.stage import StageInputError
from components.vision.data.store import (
    SCHEMA,
    ImageRecord,
    ImagesWriter,
    read_images,
    read_meta,
    split_of,
)
from components.vision.grid import decode_png, png_bytes
from tests.components.bad_parquet import corrupt_copy, truncated_copy

SIZE = 8
CLASSES = ("circle", "square", "star")


def _record(index: int, channels: int = 3, key: str | None = None) -> ImageRecord:
    """A record whose pixels, caption, labels and objects all depend on `index`."""
    pixels = np.random.default_rng(index).integers(0, 256, (SIZE, SIZE, channels), np.uint8)
    objects = tuple(
        {"shape": CLASSES[(index + j) % 3], "colour": "red", "size": "small", "bbox": [j, 1, 2, 3]}
        for j in range(index % 3)
    )
    labels = tuple((index + j) % 3 for j in range(index % 3))
    caption = f"image {index}" if index % 4 else ""
    return ImageRecord(index, key or f"set/{index}", pixels, caption, labels, objects)


def _write(out, records, channels=3, val_fraction=0.25, split_seed=0, grid=64):
    writer = ImagesWriter(
        out,
        size=SIZE,
        channels=channels,
        val_fraction=val_fraction,
        split_seed=split_seed,
        grid=grid,
    )
    with writer:
        splits = {record.id: writer.add(record) for record in records}
        written = writer.finish("test", CLASSES)
    return splits, written


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_keeps_every_field(tmp_path, channels):
    records = [_record(i, channels) for i in range(40)]
    splits, written = _write(tmp_path, records, channels=channels, grid=10)
    for split in ("train", "val"):
        table = read_images(tmp_path / f"{split}.parquet")
        expected = [r for r in records if splits[r.id] == split]
        assert len(table) == len(expected) > 0
        assert table.images.shape == (len(expected), SIZE, SIZE, channels)
        assert table.images.dtype == np.uint8
        assert (table.images == np.stack([r.image for r in expected])).all()
        assert table.ids.tolist() == [r.id for r in expected]
        assert table.captions == [r.caption for r in expected]
        assert table.labels == [list(r.labels) for r in expected]
        assert table.objects == [list(r.objects) for r in expected]
        assert table.keys == [r.key for r in expected]
    meta = read_meta(tmp_path)
    counts = {s: list(splits.values()).count(s) for s in ("train", "val")}
    assert meta.counts == counts == written.meta.counts
    assert (meta.source, meta.size, meta.channels, meta.classes) == ("test", 8, channels, CLASSES)
    # The first 10 images, 8 per row, 2 px of padding: 2 rows of (8 + 2) + 2.
    grid = decode_png((tmp_path / "grid.png").read_bytes())
    assert grid.shape == (22, 82, 3) and (grid == written.grid).all()
    assert (grid[2:10, 12:20] == records[1].image).all()  # second cell, broadcast if grey
    assert (grid[12:20, 2:10] == records[8].image).all()  # the ninth starts row two


def test_split_depends_on_the_key_alone(tmp_path):
    # Pinned: a change of the hash would move images between splits in every data set.
    val = [i for i in range(100) if split_of(f"shapes/{i}", 0.1, 0) == "val"]
    assert val == [2, 7, 11, 22, 23, 24, 29, 30, 43, 44, 46, 50, 79]
    small, _ = _write(tmp_path / "small", [_record(i) for i in range(60)])
    # More images, added in another order, some first: none of the first 60 moves.
    more = [_record(i) for i in range(200, 59, -1)] + [_record(i) for i in range(60)]
    large, _ = _write(tmp_path / "large", more)
    assert {i: large[i] for i in small} == small
    # Same key, other id and pixels: same split; other salt: another split for some keys.
    writer = ImagesWriter(tmp_path / "re", size=SIZE, channels=3, val_fraction=0.25, split_seed=0)
    with writer:
        assert [writer.add(_record(999 - i, key=f"set/{i}")) for i in small] == list(small.values())
    salted = [split_of(f"set/{i}", 0.25, 1) for i in range(60)]
    assert salted != [small[i] for i in range(60)]


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_val_share_is_close_to_val_fraction(fraction):
    val = sum(split_of(f"shapes/{i}", fraction, 0) == "val" for i in range(2000))
    # Binomial: the standard deviation of the share is <= 0.0103 on 2000 keys.
    assert abs(val / 2000 - fraction) < 0.03


def test_identical_inputs_give_identical_bytes(tmp_path):
    records = [_record(i) for i in range(30)]
    _write(tmp_path / "a", records)
    _write(tmp_path / "b", records)
    for name in ("train.parquet", "val.parquet", "meta.json", "grid.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((SIZE, SIZE, 1), np.uint8),  # grey into an RGB set
        np.zeros((SIZE, SIZE + 1, 3), np.uint8),
        np.zeros((SIZE, SIZE), np.uint8),
        np.zeros((SIZE, SIZE, 3), np.float32),
    ],
)
def test_a_record_of_another_shape_is_refused(tmp_path, pixels):
    writer = ImagesWriter(tmp_path, size=SIZE, channels=3, val_fraction=0.1, split_seed=0)
    with writer, pytest.raises(ValueError, match=r"image 7: .*expected uint8 \(8, 8, 3\)"):
        writer.add(ImageRecord(7, "k", pixels, "", ()))


def test_all_in_val_or_no_image_is_an_input_error(tmp_path):
    in_val = [i for i in range(40) if split_of(f"set/{i}", 0.5, 0) == "val"][:5]
    assert len(in_val) == 5
    with pytest.raises(StageInputError, match=r"no image in train \(5 images, all in val\)"):
        _write(tmp_path / "val", [_record(i) for i in in_val], val_fraction=0.5)
    with pytest.raises(StageInputError, match="no images to write"):
        _write(tmp_path / "none", [])


def test_empty_val_warns_and_reads_back_as_zero_images(tmp_path, caplog):
    in_train = [i for i in range(40) if split_of(f"set/{i}", 0.5, 0) == "train"][:3]
    with caplog.at_level(logging.WARNING):
        _, written = _write(tmp_path, [_record(i) for i in in_train], val_fraction=0.5)
    assert written.meta.counts == {"train": 3, "val": 0}
    assert "no image fell in val out of 3" in caplog.text
    val = read_images(tmp_path / "val.parquet")
    assert len(val) == 0 and val.images.shape == (0, SIZE, SIZE, 3)


@pytest.fixture
def stored(tmp_path):
    _write(tmp_path / "set", [_record(i) for i in range(40)])
    return tmp_path / "set" / "train.parquet"


def _table(images, metadata):
    rows = len(images)
    columns = {
        "id": list(range(rows)),
        "image": images,
        "caption": [""] * rows,
        "labels": [[]] * rows,
        "width": [SIZE] * rows,
        "height": [SIZE] * rows,
        "objects": ["[]"] * rows,
        "key": [str(i) for i in range(rows)],
    }
    return pa.table(columns, schema=SCHEMA.with_metadata(metadata))


LOOM = {"loom.format": "loom-images", "loom.version": "1", "loom.shape": "[8, 8, 3]"}


def test_damaged_or_foreign_parquet_files_name_the_file(tmp_path, stored):
    truncated = truncated_copy(stored, tmp_path / "truncated.parquet")
    corrupt = corrupt_copy(stored, tmp_path / "corrupt.parquet", column=1)  # the PNG bytes
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), foreign)
    other_format = tmp_path / "other.parquet"
    pq.write_table(
        _table([png_bytes(np.zeros((8, 8, 3), np.uint8))], {"loom.format": "x"}), other_format
    )
    newer = tmp_path / "newer.parquet"
    pq.write_table(_table([], {**LOOM, "loom.version": "2"}), newer)
    cases = [
        (tmp_path / "missing.parquet", "file not found"),
        (truncated, "not a readable Parquet file"),
        (corrupt, "not a readable Parquet file"),
        (foreign, r"no column\(s\) \['id', 'image'"),
        (other_format, "not a loom-images file"),
        (newer, "version 2, expected 1"),
    ]
    for path, message in cases:
        with pytest.raises(StageInputError, match=rf"^{re.escape(str(path))}: .*{message}"):
            read_images(path)


def test_unreadable_or_misshapen_png_cells_name_the_file_and_image(tmp_path):
    good = png_bytes(np.zeros((8, 8, 3), np.uint8))
    sixteen_bit = tmp_path / "sixteen.png"
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(sixteen_bit)
    cells = {
        "garbage": b"not a png",
        "truncated": good[: len(good) // 2],
        "sixteen-bit": sixteen_bit.read_bytes(),
        "null": None,
    }
    for name, cell in cells.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(_table([good, cell], LOOM), path)
        with pytest.raises(
            StageInputError, match=rf"^{re.escape(str(path))}: image id 1 is not a readable PNG"
        ):
            read_images(path)
    small = tmp_path / "small.parquet"
    pq.write_table(_table([good, png_bytes(np.zeros((4, 4, 3), np.uint8))], LOOM), small)
    with pytest.raises(
        StageInputError, match=rf"^{re.escape(str(small))}: image id 1 is \(4, 4, 3\), not"
    ):
        read_images(small)
    bad_json = tmp_path / "json.parquet"
    table = _table([good], LOOM).set_column(6, "objects", pa.array(["[{"]))
    pq.write_table(table, bad_json)
    with pytest.raises(StageInputError, match=rf"^{re.escape(str(bad_json))}: column 'objects'"):
        read_images(bad_json)


def test_meta_errors_name_the_file(tmp_path, stored):
    meta = json.loads((stored.parent / "meta.json").read_text())
    cases = [
        ({**meta, "format": "other"}, "not a loom-images meta.json"),
        ({**meta, "version": 2}, "version 2, expected 1"),
        ({**meta, "channels": 4}, "channels 4, expected 1 or 3"),
        ({k: v for k, v in meta.items() if k != "counts"}, "missing or malformed field"),
    ]
    for data, message in cases:
        (tmp_path / "meta.json").write_text(json.dumps(data))
        with pytest.raises(StageInputError, match=f"meta.json: {message}"):
            read_meta(tmp_path)
    with pytest.raises(StageInputError, match="meta.json: file not found"):
        read_meta(tmp_path / "nowhere")
