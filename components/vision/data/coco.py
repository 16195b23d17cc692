"""COCO "instances" JSON for a split of a data set with boxes (the shapes images).

    coco = CocoInstances(SHAPES, supercategory="shape")
    coco.add_image(image_id=3, width=32, height=32, objects=[CocoObject(0, (4, 17, 8, 8), 52)])
    coco.write(out / "instances_val.json")      # pycocotools.coco.COCO(path) loads it

Layout (what pycocotools, torchvision's CocoDetection and DETR read):
    info        {"description", "version"}
    licenses    []
    images      {"id", "file_name": "<id>.png", "width", "height"}; the pixels are the
                Parquet row with that `id` (no image files are written)
    annotations {"id" (1, 2, ... within the file), "image_id", "category_id", "bbox":
                [x, y, w, h] in pixels, "area" (the object's own pixel count), "iscrowd": 0,
                plus "attributes" (e.g. {"colour": "red", "size": "small"})}
    categories  {"id": label + 1, "name", "supercategory"}: COCO ids start at 1, the
                Parquet labels at 0
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CocoObject:
    label: int  # 0-based class id; category_id = label + 1
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    area: float
    attributes: dict[str, str] = field(default_factory=dict)


def categories(names: Sequence[str], supercategory: str = "") -> list[dict[str, Any]]:
    """COCO categories for class `names`: id = index + 1."""
    return [
        {"id": i + 1, "name": name, "supercategory": supercategory} for i, name in enumerate(names)
    ]


class CocoInstances:
    """Collects images and their objects, then writes one instances JSON file."""

    def __init__(self, names: Sequence[str], supercategory: str = "", description: str = ""):
        self.categories = categories(names, supercategory)
        self.description = description
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add_image(
        self, image_id: int, width: int, height: int, objects: Iterable[CocoObject]
    ) -> None:
        self.images.append(
            {"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height}
        )
        for obj in objects:
            if not 0 <= obj.label < len(self.categories):
                raise ValueError(f"image {image_id}: label {obj.label} has no category")
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.label + 1,
                    "bbox": list(obj.bbox),
                    "area": obj.area,
                    "iscrowd": 0,
                    "attributes": dict(obj.attributes),
                }
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "info": {"description": self.description, "version": "1"},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }

    def write(self, path: Path) -> None:
        """One line of compact JSON: the same instances give the same bytes."""
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")
