"""The stages "vision.images" (digits, shapes) and "vision.image_folder", run as the runner
runs them, and the folder stage on bad input: every error names the file."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.config import build
from components.stage import Output, RecordingLogger, StageInputError, StageIO
from components.vision.data.digits import DIGIT_NAMES, digit_caption
from components.vision.data.folder_stage import STAGE as FOLDER_STAGE
from components.vision.data.shapes import SHAPES
from components.vision.data.stage import STAGE as IMAGES_STAGE
from components.vision.data.store import read_images, read_meta
from components.vision.grid import decode_png


def _run(stage, params: dict, out: Path, inputs: dict | None = None):
    io = StageIO(inputs=inputs or {}, outputs={"images": out}, log=RecordingLogger())
    return stage.run(build(stage.config, params), io), io.log


def _both(out: Path):
    return read_images(out / "train.parquet"), read_images(out / "val.parquet")


def _check_outputs(result, log, out: Path, images: int, grid_shape: tuple[int, ...]):
    """What every images stage writes and reports, for a set of `images` images."""
    metrics = result.metrics
    assert metrics["train_images"] + metrics["val_images"] == images
    assert metrics["train_images"] > metrics["val_images"] > 0
    meta = read_meta(out)
    assert meta.counts == {"train": metrics["train_images"], "val": metrics["val_images"]}
    grid = decode_png((out / "grid.png").read_bytes())
    assert grid.shape == grid_shape
    [(name, step, logged)] = log.images
    assert (name, step) == ("grid", 0) and (logged == grid).all()
    assert result.artifacts == [Output("images", "grid.png"), Output("images", "meta.json")]
    datasets = [(d.name, d.path, d.context, d.num_rows) for d in result.datasets]
    assert datasets == [
        ("images-train", Output("images", "train.parquet"), "train", meta.counts["train"]),
        ("images-val", Output("images", "val.parquet"), "val", meta.counts["val"]),
    ]
    return meta


def test_digits(tmp_path):
    out = tmp_path / "digits"
    result, log = _run(IMAGES_STAGE, {"source": "digits", "limit": 200, "grid": 20}, out)
    assert result.metrics["images"] == 200 and result.metrics["classes"] == 10
    assert "objects" not in result.metrics
    # 20 images of 32 px, 8 per row, 2 px padding: 3 rows.
    meta = _check_outputs(result, log, out, 200, (3 * 34 + 2, 8 * 34 + 2, 3))
    assert (meta.source, meta.size, meta.channels, meta.classes) == ("digits", 32, 1, DIGIT_NAMES)
    for table in _both(out):
        assert table.images.shape[1:] == (32, 32, 1)
        # Interleaved labels: image i is digit i mod 10.
        assert [labels for labels in table.labels] == [[i % 10] for i in table.ids.tolist()]
        assert table.captions == [digit_caption(i % 10) for i in table.ids.tolist()]
        assert (table.images[:, :2] == 0).all() and (table.images[:, :, -2:] == 0).all()
    train, val = _both(out)
    assert sorted(train.ids.tolist() + val.ids.tolist()) == list(range(200))
    assert not list(out.glob("instances_*.json"))


def test_shapes(tmp_path):
    out = tmp_path / "shapes"
    params = {"source": "shapes", "size": 24, "val_fraction": 0.25, "shapes": {"count": 40}}
    result, log = _run(IMAGES_STAGE, params, out)
    assert result.metrics["images"] == 40 and result.metrics["classes"] == len(SHAPES) == 7
    meta = _check_outputs(result, log, out, 40, (5 * 26 + 2, 8 * 26 + 2, 3))  # all 40 in the grid
    assert (meta.source, meta.size, meta.channels, meta.classes) == ("shapes", 24, 3, SHAPES)
    tables = _both(out)
    objects = sum(len(o) for table in tables for o in table.objects)
    assert result.metrics["objects"] == objects >= 40
    for table, split in zip(tables, ("train", "val"), strict=True):
        coco = json.loads((out / f"instances_{split}.json").read_text())
        assert [image["id"] for image in coco["images"]] == table.ids.tolist()
        assert len(coco["annotations"]) == sum(len(o) for o in table.objects)
    limited, _ = _run(IMAGES_STAGE, {**params, "limit": 10}, tmp_path / "limited")
    assert limited.metrics["images"] == 10


def _folder(root: Path, count: int = 12) -> Path:
    """`count` PNGs of varied sizes and modes (RGB, grey), two of them in a subfolder."""
    rng = np.random.default_rng(0)
    for i in range(count):
        height, width = 16 + i, 24 - i
        pixels = rng.integers(0, 256, (height, width, 3) if i % 3 else (height, width), np.uint8)
        path = root / ("sub" if i < 2 else "") / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return root


def test_image_folder(tmp_path):
    folder, out = _folder(tmp_path / "folder"), tmp_path / "out"
    params = {"size": 16, "val_fraction": 0.3, "captions": "captions.jsonl"}
    (folder / "captions.jsonl").write_text('{"file": "sub/01.png", "caption": "one"}\n')
    result, log = _run(FOLDER_STAGE, params, out, {"folder": folder})
    assert result.metrics == {
        "train_images": result.metrics["train_images"],
        "val_images": result.metrics["val_images"],
        "files": 12.0,
        "images": 12.0,
        "bad_images_skipped": 0.0,
        "converted_images": 4.0,  # the grey ones, 0, 3, 6, 9
        "captioned_images": 1.0,
    }
    meta = _check_outputs(result, log, out, 12, (2 * 18 + 2, 8 * 18 + 2, 3))
    assert (meta.source, meta.size, meta.channels, meta.classes) == ("folder", 16, 3, ())
    train, val = _both(out)
    expected = [f"sub/{i:02d}.png" for i in range(2)] + [f"{i:02d}.png" for i in range(2, 12)]
    assert sorted(train.keys + val.keys) == sorted(expected)
    captions = dict(zip(train.keys + val.keys, train.captions + val.captions, strict=True))
    assert captions["sub/01.png"] == "one" and captions["05.png"] == ""
    grey, _ = _run(
        FOLDER_STAGE, {"size": 16, "mode": "grey"}, tmp_path / "grey", {"folder": folder}
    )
    assert read_meta(tmp_path / "grey").channels == 1
    assert grey.metrics["converted_images"] == 8.0  # now the RGB ones


# --- bad input, through the folder stage ----------------------------------------------------


def _run_folder(folder: Path, out: Path, **params):
    return _run(FOLDER_STAGE, {"size": 8, **params}, out, {"folder": folder})[0]


def _fails(folder: Path, out: Path, message: str, **params) -> None:
    with pytest.raises(StageInputError, match=message):
        _run_folder(folder, out, **params)


def _named(path: Path) -> str:
    return "^" + re.escape(str(path))


def _images(folder: Path, count: int, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (size, size), (10 * i, 100, 200)).save(folder / f"{i}.png")


def test_an_empty_folder_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    _fails(tmp_path / "empty", tmp_path / "out", _named(tmp_path / "empty") + ": no image files")


def test_a_corrupt_image_stops_the_stage_or_is_skipped(tmp_path):
    _images(tmp_path / "f", 5)
    corrupt = tmp_path / "f" / "3.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated mid-file
    _fails(tmp_path / "f", tmp_path / "a", _named(corrupt) + ": not a readable image")
    result = _run_folder(tmp_path / "f", tmp_path / "b", on_bad_image="skip")
    assert result.metrics["bad_images_skipped"] == 1 and result.metrics["images"] == 4
    assert result.metrics["files"] == 5
    assert "3.png" not in sum((t.keys for t in _both(tmp_path / "b")), [])


def test_a_wrongly_sized_image_under_exact(tmp_path):
    _images(tmp_path / "f", 5)
    odd = tmp_path / "f" / "2.png"
    Image.new("RGB", (9, 8)).save(odd)
    message = _named(odd) + r": 9×8 pixels, expected 8×8 \(fit: exact\)"
    _fails(tmp_path / "f", tmp_path / "a", message, fit="exact")
    result = _run_folder(tmp_path / "f", tmp_path / "b", fit="exact", on_bad_image="skip")
    assert result.metrics["bad_images_skipped"] == 1 and result.metrics["images"] == 4
    assert _run_folder(tmp_path / "f", tmp_path / "c").metrics["images"] == 5  # center_crop


def _with(folder: Path, name: str, image: Image.Image, **options) -> Path:
    _images(folder, 4)
    image.save(folder / name, **options)
    return folder / name


def _pixels_of(out: Path, key: str) -> np.ndarray:
    for table in _both(out):
        if key in table.keys:
            return table.images[table.keys.index(key)]
    raise AssertionError(key)


def test_a_sixteen_bit_png_is_converted_or_refused(tmp_path):
    values = np.full((8, 8), 257 * 100, np.uint16)
    path = _with(tmp_path / "f", "g16.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    message = _named(path) + r": image mode I;16 \(16-bit grey\), expected RGB"
    _fails(tmp_path / "f", tmp_path / "a", message, on_channels="error")
    result = _run_folder(tmp_path / "f", tmp_path / "b")
    assert result.metrics["converted_images"] == 1 and result.metrics["images"] == 5
    assert (_pixels_of(tmp_path / "b", "g16.png") == 100).all()


def test_a_cmyk_jpeg_is_converted_or_refused(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 255, 0))  # green
    path = _with(tmp_path / "f", "photo.jpg", cmyk, quality=95)
    message = _named(path) + r": image mode CMYK \(CMYK\), expected RGB"
    _fails(tmp_path / "f", tmp_path / "a", message, on_channels="error")
    result = _run_folder(tmp_path / "f", tmp_path / "b")
    assert result.metrics["converted_images"] == 1
    green = _pixels_of(tmp_path / "b", "photo.jpg").astype(int)
    assert np.abs(green - (0, 255, 0)).max() <= 3


def test_rgba_and_grey_images_are_converted_or_refused(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (0, 0, 255, 255)  # the right half transparent
    path = _with(tmp_path / "f", "rgba.png", Image.fromarray(rgba))
    message = _named(path) + r": image mode RGBA \(RGB with alpha\), expected RGB"
    _fails(tmp_path / "f", tmp_path / "a", message, on_channels="error")
    grey = tmp_path / "f" / "grey.png"
    Image.new("L", (8, 8), 60).save(grey)
    message = _named(grey) + r": image mode L \(grey\), expected RGB"
    _fails(tmp_path / "f", tmp_path / "a", message, on_channels="error")
    result = _run_folder(tmp_path / "f", tmp_path / "b", alpha_background="white")
    assert result.metrics["converted_images"] == 2 and result.metrics["images"] == 6
    composited = _pixels_of(tmp_path / "b", "rgba.png")
    assert (composited[:, :4] == (0, 0, 255)).all() and (composited[:, 4:] == 255).all()
    assert (_pixels_of(tmp_path / "b", "grey.png") == 60).all()
    result = _run_folder(tmp_path / "f", tmp_path / "c", mode="grey")
    assert result.metrics["converted_images"] == 5  # all but grey.png
    assert _pixels_of(tmp_path / "c", "grey.png").shape == (8, 8, 1)
