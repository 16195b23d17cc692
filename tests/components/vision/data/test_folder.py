"""Reading a folder of images: listing, fit policies, sidecar captions, channel conversion."""

import logging
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.stage import StageInputError
from components.vision.data.config import FolderImagesConfig
from components.vision.data.decode import BadImageError, open_image, to_mode
from components.vision.data.folder import FolderReport, fit_image, list_images, read_folder

RED, GREEN, BLUE = (230, 30, 30), (30, 200, 30), (40, 80, 240)


def _save(path: Path, pixels, **options) -> Path:
    """`pixels` (an array or a PIL image) as the image file `path`, folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels))
    image.save(path, **options)
    return path


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def _read(folder: Path, **config) -> tuple[list, FolderReport]:
    report = FolderReport()
    records = list(read_folder(folder, FolderImagesConfig(**config), report))
    return records, report


def _one(path: Path, **config) -> np.ndarray:
    """The pixels the folder reader makes of the single image `path` (in its own folder)."""
    records, _ = _read(path.parent, **config)
    assert len(records) == 1
    return records[0].image


def _png_16bit_rgb(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit RGB PNG (which Pillow cannot write) of uint16 [H, W, 3], by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    height, width, _ = samples.shape
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
    png = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)
    return path


# --- fit ------------------------------------------------------------------------------------


def test_an_image_of_the_size_is_kept_as_is_by_every_fit():
    pixels = _noise(8, 8)
    for fit in ("center_crop", "resize", "pad", "exact"):
        fitted = fit_image(Image.fromarray(pixels), 8, fit, Path("x.png"))
        assert (np.asarray(fitted) == pixels).all(), fit


def test_center_crop_takes_the_central_square_offsets_rounded_down():
    ramp = np.tile(np.arange(25, dtype=np.uint8), (8, 1))  # grey, column index as value
    cropped = np.asarray(fit_image(Image.fromarray(ramp), 8, "center_crop", Path("x.png")))
    assert (cropped == np.arange(8, 16)).all()  # (25 - 8) // 2 = 8 columns off the left
    tall = np.zeros((24, 8, 3), np.uint8)
    tall[:8], tall[8:16], tall[16:] = RED, GREEN, BLUE
    scaled = np.asarray(fit_image(Image.fromarray(tall), 16, "center_crop", Path("x.png")))
    assert scaled.shape == (16, 16, 3) and (scaled == GREEN).all()


def test_resize_stretches():
    halves = np.zeros((8, 16, 3), np.uint8)
    halves[:, :8], halves[:, 8:] = RED, BLUE
    stretched = np.asarray(fit_image(Image.fromarray(halves), 16, "resize", Path("x.png")))
    assert stretched.shape == (16, 16, 3)
    assert (stretched[:, :8] == RED).all() and (stretched[:, 8:] == BLUE).all()


def test_pad_keeps_the_aspect_and_centres_on_black():
    wide = _noise(8, 16)  # 2:1, already 16 wide: pasted unscaled
    padded = np.asarray(fit_image(Image.fromarray(wide), 16, "pad", Path("x.png")))
    assert padded.shape == (16, 16, 3)
    assert (padded[4:12] == wide).all()
    assert (padded[:4] == 0).all() and (padded[12:] == 0).all()
    tall = Image.new("L", (16, 32), 200)  # scaled by 1/2 to 8×16, centred in width
    padded = np.asarray(fit_image(tall, 16, "pad", Path("x.png")))
    assert (padded[:, 4:12] == 200).all()
    assert (padded[:, :4] == 0).all() and (padded[:, 12:] == 0).all()


def test_exact_refuses_another_size():
    with pytest.raises(BadImageError, match=r"^x.png: 9×8 pixels, expected 8×8 \(fit: exact\)"):
        fit_image(Image.fromarray(_noise(8, 9)), 8, "exact", Path("x.png"))


def test_folder_records_are_size_by_size_in_the_mode(tmp_path):
    _save(tmp_path / "wide.png", _noise(10, 30))
    _save(tmp_path / "grey.png", _noise(12, 12, channels=1))
    for mode, channels in (("rgb", 3), ("grey", 1)):
        records, _ = _read(tmp_path, size=8, mode=mode)
        assert [r.image.shape for r in records] == [(8, 8, channels)] * 2
        assert all(r.image.dtype == np.uint8 for r in records)


# --- files and captions ---------------------------------------------------------------------


def test_listing_recurses_sorts_and_skips_hidden_and_other_files(tmp_path):
    image = _noise(8, 8)
    for name in ("b.png", "a/z.png", "a/b/c.PNG", "A.jpg", "c.jpeg", "dir.png/inner.png"):
        _save(tmp_path / name, image, format="PNG")
    for name in (".hidden.png", ".cache/x.png", "a/.y.png", "x.gif"):
        _save(tmp_path / name, image, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    expected = ["A.jpg", "a/b/c.PNG", "a/z.png", "b.png", "c.jpeg", "dir.png/inner.png"]
    assert list_images(tmp_path) == expected
    records, report = _read(tmp_path, size=8)
    assert [(r.id, r.key) for r in records] == list(enumerate(expected))
    assert (report.files, report.images, report.bad_images_skipped) == (6, 6, 0)


def test_empty_or_missing_folder_is_an_input_error(tmp_path):
    _save(tmp_path / "empty" / ".hidden.png", _noise(8, 8))
    with pytest.raises(StageInputError, match=r"empty: no image files \(.png, .jpg, .jpeg\)"):
        _read(tmp_path / "empty")
    with pytest.raises(StageInputError, match="nowhere: image folder not found"):
        _read(tmp_path / "nowhere")


@pytest.fixture
def captioned(tmp_path):
    for name in ("a.png", "b/c.png", "d.png"):
        _save(tmp_path / name, _noise(8, 8))
    return tmp_path


CSV = 'file,caption\na.png,a red square\nb/c.png,"one, two"\n'
JSONL = (
    '{"file": "a.png", "caption": "a red square"}\n\n{"file": "b/c.png", "caption": "one, two"}\n'
)


@pytest.mark.parametrize(
    "name, text", [("captions.csv", CSV), ("captions.jsonl", JSONL), ("meta/c.csv", "\ufeff" + CSV)]
)
def test_captions_from_a_sidecar(captioned, name, text):
    (captioned / name).parent.mkdir(exist_ok=True)
    (captioned / name).write_text(text, encoding="utf-8")
    records, report = _read(captioned, size=8, captions=name)
    assert [(r.key, r.caption) for r in records] == [
        ("a.png", "a red square"),
        ("b/c.png", "one, two"),
        ("d.png", ""),
    ]
    assert report.captioned_images == 2 and report.images == 3


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.csv", CSV + "x.png,lost\n", r"c.csv line 4: 'x.png' is no image file of"),
        ("c.csv", CSV + "a.png,again\n", r"c.csv line 4: a second caption for 'a.png'"),
        ("c.csv", "file,caption\na.png\n", r"c.csv line 2: expected file,caption"),
        ("c.csv", "name,text\na.png,x\n", r"c.csv: the header row .* lacks the columns"),
        ("c.jsonl", JSONL + '{"file": "nope.png", "caption": "x"}\n', r"c.jsonl line 4: 'nope"),
        (
            "c.jsonl",
            JSONL + '{"file": "d.png", "caption": "x"}\n{"file": "d.png", "caption": ""}\n',
            r"c.jsonl line 5: a second caption for 'd.png'",
        ),
        ("c.jsonl", '{"file": "a.png"\n', r"c.jsonl line 1: invalid JSON"),
        ("c.jsonl", '{"file": "a.png", "caption": 3}\n', r"c.jsonl line 1: expected an object"),
    ],
)
def test_sidecar_errors_name_the_line(captioned, name, text, message):
    (captioned / name).write_text(text)
    with pytest.raises(StageInputError, match=message):
        _read(captioned, size=8, captions=name)


def test_missing_or_binary_sidecar_is_an_input_error(captioned):
    with pytest.raises(StageInputError, match=r"c.csv: captions file not found"):
        _read(captioned, size=8, captions="c.csv")
    (captioned / "c.csv").write_bytes(b"file,caption\na.png,\xff\xfe\n")
    with pytest.raises(StageInputError, match=r"c.csv: not UTF-8 text"):
        _read(captioned, size=8, captions="c.csv")


# --- bad images -----------------------------------------------------------------------------


def test_a_bad_image_is_skipped_and_counted_or_stops_naming_it(tmp_path, caplog):
    _save(tmp_path / "a.png", _noise(8, 8))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _save(tmp_path / "c.png", _noise(8, 8, seed=1))
    with caplog.at_level(logging.WARNING):
        records, report = _read(tmp_path, size=8, on_bad_image="skip")
    assert [r.key for r in records] == ["a.png", "c.png"]
    assert [r.id for r in records] == [0, 2]  # ids are file positions
    assert (report.files, report.images, report.bad_images_skipped) == (3, 2, 1)
    assert f"{tmp_path / 'b.png'}: not a readable image" in caplog.text
    where = re.escape(str(tmp_path / "b.png"))
    with pytest.raises(StageInputError, match=rf"^{where}: not a readable image.*skip leaves"):
        _read(tmp_path, size=8, on_bad_image="error")


def test_only_bad_images_is_an_input_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    _save(tmp_path / "b.png", _noise(8, 9))
    with pytest.raises(StageInputError, match=r"none of its 2 image files .*2 bad images skipped"):
        _read(tmp_path, size=8, fit="exact", on_bad_image="skip")


# --- channels -------------------------------------------------------------------------------


def test_rgba_and_la_are_composited_over_the_background(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [255, 0, 0, 128]]], np.uint8)
    path = _save(tmp_path / "rgba" / "a.png", np.tile(rgba, (8, 3, 1))[:, :8])
    white = _one(path, size=8)[0, :3]
    assert white.tolist() == [[255, 255, 255], [0, 0, 255], [255, 127, 127]]
    black = _one(path, size=8, alpha_background="black")[0, :3]
    assert black.tolist() == [[0, 0, 0], [0, 0, 255], [128, 0, 0]]
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0], la[:, 4:, 1] = 90, 255  # left half transparent
    path = _save(tmp_path / "la" / "a.png", Image.fromarray(la, "LA"))
    grey = _one(path, size=8, mode="grey")[..., 0]
    assert (grey[:, :4] == 255).all() and (grey[:, 4:] == 90).all()


def test_grey_and_rgb_convert_both_ways(tmp_path):
    grey = _save(tmp_path / "grey" / "a.png", np.full((8, 8), 77, np.uint8))
    assert (_one(grey, size=8) == 77).all()  # the grey value in all three channels
    assert _one(grey, size=8).shape == (8, 8, 3)
    primaries = np.zeros((8, 8, 3), np.uint8)
    primaries[:, :3], primaries[:, 3:6], primaries[:, 6:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    rgb = _save(tmp_path / "rgb" / "a.png", primaries)
    luma = _one(rgb, size=8, mode="grey")[0, :, 0]
    assert luma.tolist() == [76] * 3 + [150] * 3 + [29] * 2  # 0.299, 0.587, 0.114 of 255


def test_palette_images_take_their_colours_and_transparency(tmp_path):
    indices = np.tile(np.array([0, 1], np.uint8), (8, 4))
    palette = Image.fromarray(indices, "P")
    palette.putpalette([*RED, *BLUE] + [0] * 762)
    path = _save(tmp_path / "p" / "a.png", palette)
    assert _one(path, size=8)[0, :2].tolist() == [list(RED), list(BLUE)]
    path = _save(tmp_path / "pt" / "a.png", palette, transparency=0)
    assert _one(path, size=8)[0, :2].tolist() == [[255, 255, 255], list(BLUE)]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([0, 128, 129, 257 * 100, 32768, 65535, 1000, 60000], np.uint16)
    path = _save(tmp_path / "g16" / "a.png", np.tile(values, (8, 1)))
    assert open_image(path)[1] == "I;16"
    expected = [0, 0, 1, 100, 128, 255, 4, 233]  # round(v · 255 / 65535)
    assert _one(path, size=8, mode="grey")[0, :, 0].tolist() == expected
    assert (_one(path, size=8)[0] == np.array(expected)[:, None]).all()
    # A tRNS grey value: those pixels are transparent, the rest still scaled.
    path = _save(tmp_path / "t16" / "a.png", np.tile(values, (8, 1)), transparency=1000)
    assert _one(path, size=8, mode="grey")[0, :, 0].tolist() == [*expected[:6], 255, 233]


def test_sixteen_bit_rgb_keeps_the_high_byte(tmp_path):
    samples = np.zeros((8, 8, 3), np.uint16)
    samples[..., 0], samples[..., 1], samples[..., 2] = 0xABFF, 0x0100, 0xFFFF
    path = _png_16bit_rgb(tmp_path / "a.png", samples)
    assert open_image(path)[1] == "RGB;16"
    records, report = _read(tmp_path, size=8)
    assert (records[0].image == (0xAB, 0x01, 0xFF)).all()
    assert report.converted_images == 1  # not 8-bit RGB, though Pillow says "RGB"
    with pytest.raises(StageInputError, match=r"a.png: image mode RGB;16 \(16-bit RGB\)"):
        _read(tmp_path, size=8, on_channels="error")


def test_cmyk_jpeg_is_converted_or_refused(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    path = _save(tmp_path / "a.jpg", cmyk, quality=95)
    assert open_image(path)[1] == "CMYK"
    records, report = _read(tmp_path, size=8)
    assert np.abs(records[0].image.astype(int) - (255, 0, 0)).max() <= 3  # JPEG is lossy
    assert report.converted_images == 1
    with pytest.raises(StageInputError, match=r"a.jpg: image mode CMYK \(CMYK\), expected RGB"):
        _read(tmp_path, size=8, on_channels="error")


def test_on_channels_error_accepts_the_target_mode_only(tmp_path):
    _save(tmp_path / "a.png", _noise(8, 8, channels=1))
    records, report = _read(tmp_path, size=8, mode="grey", on_channels="error")
    assert report.converted_images == 0 and records[0].image.shape == (8, 8, 1)
    with pytest.raises(StageInputError, match=r"a.png: image mode L \(grey\), expected RGB"):
        _read(tmp_path, size=8, on_channels="error")


def test_a_mode_with_no_8_bit_meaning_is_a_bad_image():
    floats = Image.fromarray(np.zeros((8, 8), np.float32))
    with pytest.raises(BadImageError, match=r"x.tif: image mode F \(32-bit float\) has no 8-bit"):
        to_mode(floats, "F", "rgb", "convert", "white", Path("x.tif"))


def test_jpeg_is_turned_upright_by_its_exif_orientation(tmp_path):
    halves = np.zeros((8, 16, 3), np.uint8)
    halves[:, :8] = RED  # left half red, 16 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    path = _save(tmp_path / "a.jpg", halves, exif=exif, quality=95)
    upright, mode = open_image(path)
    assert upright.size == (8, 16) and mode == "RGB"  # now tall, the red half on top
    pixels = np.asarray(upright).astype(int)
    assert np.abs(pixels[1:6] - RED).max() < 20 and pixels[10:].max() < 20
