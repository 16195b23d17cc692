"""Any COCO-format detection set: a folder of images and an instances JSON, validated.

    coco = read_coco_folder(images_dir, annotations_json, on_bad_annotation="skip")
    coco.records          [DetectionRecord]: RGB pixels, xywh pixel boxes, labels 0..K-1
    coco.classes          label -> category name
    coco.category_ids     label -> the file's category id (to write results back)
    coco.report           counts: kept, skipped, dropped (see CocoReport)

The JSON needs "images", "annotations" and "categories" lists; "info" and "licenses" are
ignored. A missing, empty or non-JSON file, a missing list, no categories, a malformed or
repeated category id, or no usable annotation at all (after skipping) is always fatal: a
StageInputError naming the file.

Bad entries, each named by the file and its id (its position where it has no id), are
skipped with a warning and counted (on_bad_annotation "skip") or stop the read with a
StageInputError ("error"):
  image       not a mapping; no int "id", str "file_name", positive int "width"/"height";
              an id seen before (the first is kept); a file name outside the folder; the
              file missing, not decodable as an image (decode.open_image, then RGB by
              decode.to_mode), or not width × height. Its annotations go with it, counted in
              `annotations_of_skipped_images`.
  annotation  not a mapping; no int "id" or an id seen before (the first is kept); an
              "image_id" the images do not list; a "category_id" the categories do not
              list; "bbox" not 4 finite numbers; width or height <= 0; the box outside its
              image by more than BOX_TOLERANCE pixels (within it, the box is clipped).
Crowd annotations ("iscrowd": 1) are not objects DETR is trained on: dropped and counted.
Images with no annotation are kept (they teach the "no object" class).

Category ids become contiguous labels in the order of their ids: the smallest id is label 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from components.detection.data.config import OnBadAnnotation
from components.detection.data.dataset import DetectionRecord
from components.inputs import read_json
from components.stage import StageInputError
from components.vision.data.decode import BadImageError, open_image, to_mode

log = logging.getLogger(__name__)

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (annotation tools round)
SECTIONS = ("images", "annotations", "categories")


@dataclass
class CocoReport:
    """Counts of one read. Every annotation of the file is kept, skipped as bad, skipped
    with its image, or dropped as a crowd; every image is kept or skipped as bad."""

    images: int = 0
    annotations: int = 0
    bad_images_skipped: int = 0
    bad_annotations_skipped: int = 0
    annotations_of_skipped_images: int = 0
    crowd_annotations_dropped: int = 0
    boxes_clipped: int = 0  # kept boxes that stuck out by up to BOX_TOLERANCE

    def metrics(self) -> dict[str, float]:
        return {name: float(value) for name, value in asdict(self).items()}


@dataclass
class CocoFolder:
    records: list[DetectionRecord]
    classes: tuple[str, ...]  # label -> name
    category_ids: tuple[int, ...]  # label -> the file's category id
    report: CocoReport = field(default_factory=CocoReport)

    def category_id(self, label: int) -> int:
        """The file's category id of contiguous `label`."""
        return self.category_ids[label]


def read_coco_folder(
    images_dir: Path, annotations: Path, on_bad_annotation: OnBadAnnotation = "error"
) -> CocoFolder:
    """The images of `annotations` (file names relative to `images_dir`) with their boxes,
    validated as the module doc says."""
    images_dir, annotations = Path(images_dir), Path(annotations)
    data = _read_instances(annotations)
    ids, names = _categories(data["categories"], annotations)
    label_of = {category_id: label for label, category_id in enumerate(ids)}
    reader = _Reader(annotations, images_dir, on_bad_annotation)
    pixels = reader.images(data["images"])
    boxes: dict[int, list[list[float]]] = {image_id: [] for image_id in pixels}
    labels: dict[int, list[int]] = {image_id: [] for image_id in pixels}
    for image_id, box, category_id in reader.annotations(data["annotations"], label_of):
        boxes[image_id].append(box)
        labels[image_id].append(label_of[category_id])
    report = reader.report
    report.images, report.annotations = len(pixels), sum(len(b) for b in boxes.values())
    if report.annotations == 0:
        raise StageInputError(
            f"{annotations}: no usable annotations ({report.bad_annotations_skipped} bad, "
            f"{report.annotations_of_skipped_images} of skipped images, "
            f"{report.crowd_annotations_dropped} crowd)"
        )
    records = [
        DetectionRecord(
            image_id,
            image,
            np.array(boxes[image_id], np.float32).reshape(-1, 4),
            np.array(labels[image_id], np.int64),
        )
        for image_id, image in pixels.items()
    ]
    return CocoFolder(records, names, ids, report)


def _read_instances(path: Path) -> dict[str, list[Any]]:
    if path.is_file() and path.stat().st_size == 0:
        raise StageInputError(f"{path}: empty annotation file (expected COCO instances JSON)")
    data = read_json(path)
    if not isinstance(data, dict):
        raise StageInputError(f"{path}: expected a JSON object with keys {list(SECTIONS)}")
    missing = [key for key in SECTIONS if not isinstance(data.get(key), list)]
    if missing:
        raise StageInputError(f"{path}: no list {missing} (keys: {sorted(data)})")
    return data


def _categories(entries: list[Any], path: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(ids sorted, their names); fatal on any bad entry: every box's class depends on it."""
    if not entries:
        raise StageInputError(f"{path}: no categories")
    names: dict[int, str] = {}
    for position, entry in enumerate(entries):
        category_id = entry.get("id") if isinstance(entry, dict) else None
        if not _is_int(category_id) or not isinstance(entry.get("name"), str):
            raise StageInputError(
                f"{path}: categories[{position}]: expected {{'id': int, 'name': str}}, "
                f"got {_short(entry)}"
            )
        if category_id in names:
            raise StageInputError(f"{path}: category id {category_id} listed twice")
        names[category_id] = entry["name"]
    ids = tuple(sorted(names))
    return ids, tuple(names[i] for i in ids)


class _Reader:
    """Validates entries one by one, reporting each bad one by `on_bad`."""

    def __init__(self, path: Path, images_dir: Path, on_bad: OnBadAnnotation):
        self.path, self.images_dir, self.on_bad = path, images_dir, on_bad
        self.report = CocoReport()
        self.sizes: dict[int, tuple[int, int]] = {}  # kept image id -> (width, height)
        self.skipped_images: set[int] = set()

    def bad_image(self, what: str, message: str) -> None:
        self._bad(what, message)
        self.report.bad_images_skipped += 1

    def bad_annotation(self, what: str, message: str) -> None:
        self._bad(what, message)
        self.report.bad_annotations_skipped += 1

    def _bad(self, what: str, message: str) -> None:
        text = f"{self.path}: {what}: {message}"
        if self.on_bad == "error":
            raise StageInputError(text + " (on_bad_annotation: skip skips it)")
        log.warning("skipped: %s", text)

    def images(self, entries: list[Any]) -> dict[int, np.ndarray]:
        """Kept image id -> uint8 [H, W, 3], in file order."""
        pixels: dict[int, np.ndarray] = {}
        for position, entry in enumerate(entries):
            image_id = entry.get("id") if isinstance(entry, dict) else None
            if not _is_int(image_id):
                self.bad_image(f"images[{position}]", f"no int 'id' in {_short(entry)}")
                continue
            what = f"image id {image_id}"
            if image_id in pixels or image_id in self.skipped_images:
                self.bad_image(what, f"id listed twice (images[{position}])")
                continue
            image = self._image(entry, what)
            if image is None:
                self.skipped_images.add(image_id)
            else:
                pixels[image_id] = image
                self.sizes[image_id] = (image.shape[1], image.shape[0])
        return pixels

    def _image(self, entry: dict[str, Any], what: str) -> np.ndarray | None:
        name, width, height = entry.get("file_name"), entry.get("width"), entry.get("height")
        if not isinstance(name, str) or not name:
            self.bad_image(what, f"no str 'file_name' in {_short(entry)}")
            return None
        what = f"{what} ({name})"
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            self.bad_image(
                what, f"expected positive int 'width' and 'height', got {width}, {height}"
            )
            return None
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            self.bad_image(what, "file_name is not a path inside the images folder")
            return None
        file = self.images_dir / name
        if not file.is_file():
            self.bad_image(what, f"no file {file}")
            return None
        try:
            image, mode = open_image(file)
            rgb, _ = to_mode(image, mode, "rgb", "convert", "white", file)
        except BadImageError as err:
            self.bad_image(what, str(err))
            return None
        if rgb.size != (width, height):
            size = f"{rgb.size[0]}×{rgb.size[1]}"
            self.bad_image(what, f"the file is {size}, the entry says {width}×{height}")
            return None
        return np.asarray(rgb, np.uint8)

    def annotations(
        self, entries: list[Any], label_of: dict[int, int]
    ) -> list[tuple[int, list[float], int]]:
        """(image id, box xywh clipped to the image, category id) of each kept annotation."""
        kept: list[tuple[int, list[float], int]] = []
        seen: set[int] = set()
        for position, entry in enumerate(entries):
            annotation_id = entry.get("id") if isinstance(entry, dict) else None
            if not _is_int(annotation_id):
                self.bad_annotation(f"annotations[{position}]", f"no int 'id' in {_short(entry)}")
                continue
            what = f"annotation id {annotation_id}"
            if annotation_id in seen:
                self.bad_annotation(what, f"id listed twice (annotations[{position}])")
                continue
            seen.add(annotation_id)
            image_id = entry.get("image_id")
            if _is_int(image_id) and image_id in self.skipped_images:
                self.report.annotations_of_skipped_images += 1
                continue
            if entry.get("iscrowd"):
                self.report.crowd_annotations_dropped += 1
                continue
            box = self._box(entry, what, label_of)
            if box is not None:
                kept.append((image_id, box, entry["category_id"]))
        return kept

    def _box(
        self, entry: dict[str, Any], what: str, label_of: dict[int, int]
    ) -> list[float] | None:
        image_id, category_id, bbox = (entry.get(k) for k in ("image_id", "category_id", "bbox"))
        if not (_is_int(image_id) and image_id in self.sizes):
            self.bad_annotation(what, f"image_id {image_id!r} is not among the images")
            return None
        if not (_is_int(category_id) and category_id in label_of):
            self.bad_annotation(what, f"category_id {category_id!r} is not among the categories")
            return None
        if not _is_box(bbox):
            self.bad_annotation(what, f"bbox {bbox!r}: expected 4 finite numbers [x, y, w, h]")
            return None
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            self.bad_annotation(what, f"bbox {bbox}: zero-size box (width and height must be > 0)")
            return None
        width, height = self.sizes[image_id]
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        t = BOX_TOLERANCE
        sticks_out = x < -t or y < -t or x + w > width + t or y + h > height + t
        if sticks_out or x1 <= x0 or y1 <= y0:  # the latter: all of it in the margin
            image = f"image {image_id} ({width}×{height})"
            self.bad_annotation(what, f"bbox {bbox} is outside {image}")
            return None
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            self.report.boxes_clipped += 1
        return [x0, y0, x1 - x0, y1 - y0]


def _short(entry: object, limit: int = 120) -> str:
    """repr(entry), cut to `limit` characters (a COCO entry may carry long polygons)."""
    text = repr(entry)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_box(value: object) -> TypeGuard[list[int | float]]:
    """4 finite numbers (not bools)."""
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
    )
