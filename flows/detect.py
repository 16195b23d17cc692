"""`loom detect IMAGE...`: a trained detector on a user's own images.

    loom detect drawing.png photo.jpg                 # the project's detector (if it has one)
    loom detect *.png --run 3f2a9c --threshold 0.3    # the detector a detector@... run registered
    loom detect img.png --model data/detectors/shapes --out found/

Writes into --out (default `detections/`): `detections.json` (COCO results format, what
`COCO.loadRes` reads: image_id, category_id = class + 1, bbox xywh in pixels, score),
`images.json` (the COCO "images" and "categories" those ids refer to) and `<name>.png` per
image with the boxes drawn. Each image is scaled so its longer side is the size the detector
trained at; boxes are in the pixels of the file as given.

Every failure is a `DetectError` naming what is wrong (an image that does not decode, a run
that made no detector, a directory that is no detector, weights that do not fit the classes
of its config), raised before anything is written.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flows import atomic, project, trained

DETECTOR = trained.ModelKind("detection.detector", "detector", "detector")


class DetectError(ValueError):
    """What `loom detect` cannot do, and why."""


def read_rgb(path: Path) -> np.ndarray:
    """The pixels of an image file as uint8 RGB [H, W, 3] (grey, palette, alpha and 16-bit
    images converted as the vision folder reader converts them)."""
    from components.vision.data.decode import BadImageError, open_image, to_mode

    if not path.is_file():
        raise DetectError(f"{path}: no such image file")
    try:
        image, mode = open_image(path)
        rgb, _ = to_mode(image, mode, "rgb", "convert", "white", path)
    except BadImageError as err:
        raise DetectError(str(err)) from None
    return np.array(rgb, dtype=np.uint8)  # a writable copy


def detector_dir(root: Path | None, run: str | None, model: Path | None, scratch: Path) -> Path:
    """The detector directory to load: --model as given, the model a --run registered
    (downloaded into `scratch`), or the project's one detector output."""
    try:
        return trained.model_dir(DETECTOR, root, run, model, scratch)
    except trained.ModelNotFound as err:
        raise DetectError(str(err)) from None


def load_detector(directory: Path) -> Any:
    from components.detection.saved import Detector
    from components.stage import StageInputError

    if not (directory / "config.json").is_file():
        raise DetectError(f"{directory}: not a detector directory (no config.json)")
    try:
        return Detector.load(directory)
    except (StageInputError, ValueError) as err:
        raise DetectError(str(err)) from None


def detect(
    images: Sequence[Path],
    out: Path,
    run: str | None = None,
    model: Path | None = None,
    threshold: float = 0.5,
) -> list[list[dict[str, Any]]]:
    """Detect in each of `images`, write the outputs into `out`; returns each image's
    detections at or above `threshold` (COCO results rows, plus "label")."""
    from components.detection.evaluate import results_json
    from components.detection.evaluation.draw import draw_boxes
    from components.vision.grid import png_bytes

    if not 0 <= threshold <= 1:
        raise DetectError(f"--threshold {threshold}: expected a score in [0, 1]")
    pixels = [read_rgb(Path(p)) for p in images]  # every image checked before any work
    try:
        root: Path | None = project.find_root()
    except project.ProjectError:  # not inside a project: only --model can name a detector
        root = None
    with tempfile.TemporaryDirectory(prefix="loom-detect-") as scratch:
        detector = load_detector(detector_dir(root, run, model, Path(scratch)))
    found = detector.detect_fitted(pixels)

    rows: list[list[dict[str, Any]]] = []
    results = []
    for image_id, f in enumerate(found, start=1):
        kept = [row for row in results_json([image_id], [f]) if row["score"] >= threshold]
        for row in kept:
            row["label"] = detector.classes[row["category_id"] - 1]
        rows.append(kept)
        results += [{k: v for k, v in row.items() if k != "label"} for row in kept]
    names = _png_names(images)
    out.mkdir(parents=True, exist_ok=True)
    for image, f, name in zip(pixels, found, names, strict=True):
        scale = max(1, round(512 / max(image.shape[:2])))  # small images drawn larger
        drawn = draw_boxes(image, f, detector.classes, threshold, scale=scale)
        atomic.write_bytes(out / name, png_bytes(drawn))
    index = {
        "images": [
            {"id": i, "file_name": str(p), "width": int(im.shape[1]), "height": int(im.shape[0]),
             "drawn": name}
            for i, (p, im, name) in enumerate(zip(images, pixels, names, strict=True), start=1)
        ],
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(detector.classes)],
        "threshold": threshold,
    }  # fmt: skip
    atomic.write_bytes(out / "images.json", (json.dumps(index, indent=2) + "\n").encode())
    atomic.write_bytes(out / "detections.json", (json.dumps(results, indent=2) + "\n").encode())
    return rows


def _png_names(images: Sequence[Path]) -> list[str]:
    """`<stem>.png` per image, numbered where two images share a stem."""
    names: list[str] = []
    for path in images:
        name, n = f"{Path(path).stem}.png", 1
        while name in names or name in ("images.json", "detections.json"):
            n += 1
            name = f"{Path(path).stem}-{n}.png"
        names.append(name)
    return names
