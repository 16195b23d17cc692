"""Any folder of PNG/JPEG files as size×size images, with optional captions from a sidecar.

Files: every *.png, *.jpg, *.jpeg (any letter case) under the folder, recursively, skipping
hidden files and folders (a name starting with "."), sorted by relative path. An image's id
is its position in that order; its split key is its relative path ("cats/001.jpg"), so
adding files moves no other file between train and val.

Each file is read (`decode.open_image`), brought to the mode (`decode.to_mode`) and fitted
(`fit_image`). A file that does not decode, has no 8-bit conversion, or is not size×size
under fit "exact" is a bad image: skipped with a warning naming it (on_bad_image "skip",
counted in `bad_images_skipped`) or a StageInputError naming it ("error").

Captions (config.captions, relative to the folder):
    .csv    a header row with columns `file` and `caption`, then one row per image
    .jsonl  one {"file": "cats/001.jpg", "caption": "a cat"} object per line
`file` is the image's path relative to the folder, with "/". An image without a row gets
the caption ""; a row naming no image file of the folder, or a file named twice, is a
StageInputError naming the sidecar's line.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from components.inputs import json_line
from components.stage import StageInputError
from components.vision.data.config import Fit, FolderImagesConfig
from components.vision.data.decode import BadImageError, open_image, to_mode
from components.vision.data.store import ImageRecord

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RESAMPLE = Image.Resampling.LANCZOS


@dataclass
class FolderReport:
    """Counts of one read: `files` found = `images` kept + `bad_images_skipped`."""

    files: int = 0
    images: int = 0
    bad_images_skipped: int = 0
    converted_images: int = 0  # kept images whose mode was not the target mode
    captioned_images: int = 0  # kept images with a caption row

    def metrics(self) -> dict[str, float]:
        return {name: float(value) for name, value in asdict(self).items()}


def list_images(folder: Path) -> list[str]:
    """Relative paths ("a/b.png") of the image files under `folder`, sorted; StageInputError
    naming the folder if it is missing or holds none."""
    if not folder.is_dir():
        raise StageInputError(f"{folder}: image folder not found (or not a directory)")
    names = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not names:
        raise StageInputError(
            f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder or below it"
        )
    return names


def read_captions(folder: Path, name: str, files: list[str]) -> dict[str, str]:
    """file -> caption from the sidecar `folder / name` (.csv or .jsonl, see the module doc)."""
    path = folder / name
    if not path.is_file():
        raise StageInputError(f"{path}: captions file not found")
    try:
        rows = _csv_rows(path) if path.suffix == ".csv" else _jsonl_rows(path)
        captions: dict[str, str] = {}
        known = set(files)
        for line, file, text in rows:
            if file not in known:
                raise StageInputError(f"{path} line {line}: {file!r} is no image file of {folder}")
            if file in captions:
                raise StageInputError(f"{path} line {line}: a second caption for {file!r}")
            captions[file] = text
    except UnicodeDecodeError as err:
        raise StageInputError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
    return captions


def read_folder(
    folder: Path, config: FolderImagesConfig, report: FolderReport
) -> Iterator[ImageRecord]:
    """The folder's usable images in file order, as uint8 [size, size, C] records (C = 3 for
    mode "rgb", 1 for "grey"); `report` counts as it goes."""
    files = list_images(folder)
    captions = read_captions(folder, config.captions, files) if config.captions else {}
    report.files = len(files)
    for index, name in enumerate(files):
        path = folder / name
        try:
            image, source_mode = open_image(path)
            image, converted = to_mode(
                image, source_mode, config.mode, config.on_channels, config.alpha_background, path
            )
            image = fit_image(image, config.size, config.fit, path)
        except BadImageError as err:
            if config.on_bad_image == "error":
                raise StageInputError(f"{err} (on_bad_image: skip leaves it out)") from None
            log.warning("skipped a bad image: %s", err)
            report.bad_images_skipped += 1
            continue
        report.images += 1
        report.converted_images += converted
        report.captioned_images += name in captions
        pixels = np.asarray(image, dtype=np.uint8).reshape(config.size, config.size, -1)
        yield ImageRecord(index, name, pixels, captions.get(name, ""), ())
    if report.images == 0:
        raise StageInputError(
            f"{folder}: none of its {report.files} image files could be used "
            f"({report.bad_images_skipped} bad images skipped)"
        )


def fit_image(image: Image.Image, size: int, fit: Fit, path: Path) -> Image.Image:
    """`image` as size×size by `fit` (an image already size×size is returned as is):

    center_crop  the central square of side min(w, h) (offsets rounded down), resized
    resize       stretched to size×size, aspect ratio not kept
    pad          resized so its longer side is `size` (aspect kept), centred on black
    exact        BadImageError naming `path` unless it is size×size already
    Resizing is Lanczos.
    """
    width, height = image.size
    if (width, height) == (size, size):
        return image
    if fit == "exact":
        raise BadImageError(f"{path}: {width}×{height} pixels, expected {size}×{size} (fit: exact)")
    if fit == "resize":
        return image.resize((size, size), RESAMPLE)
    if fit == "center_crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return image.crop((left, top, left + side, top + side)).resize((size, size), RESAMPLE)
    scale = size / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new(image.mode, (size, size))  # zeros: black
    canvas.paste(image.resize(inner, RESAMPLE), ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


def _csv_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as lines:
        reader = csv.DictReader(lines)
        missing = {"file", "caption"} - set(reader.fieldnames or ())
        if missing:
            raise StageInputError(
                f"{path}: the header row {reader.fieldnames} lacks the columns {sorted(missing)}"
                " (expected file,caption)"
            )
        for row in reader:
            file, text = row["file"], row["caption"]
            if file is None or text is None:
                raise StageInputError(f"{path} line {reader.line_num}: expected file,caption")
            yield reader.line_num, file.strip(), text


def _jsonl_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    with path.open(encoding="utf-8-sig") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            record = json_line(line, path, number)
            ok = isinstance(record, dict) and all(
                isinstance(record.get(key), str) for key in ("file", "caption")
            )
            if not ok:
                raise StageInputError(
                    f"{path} line {number}: expected an object with string keys file, caption"
                )
            yield number, record["file"].strip(), record["caption"]
