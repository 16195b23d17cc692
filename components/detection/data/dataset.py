"""Detection samples for DETR: normalised images, targets, and a padding collate.

    records = [DetectionRecord.from_image(i, image) for i, split, image in generate(config)]
    data = DetectionDataset(records, augment=Compose([RandomHorizontalFlip()]))
    image, target = data[0]
        image              float [3, H, W], (pixel / 255 - mean) / std per channel
        target["labels"]   int64 [n]
        target["boxes"]    float [n, 4] cx, cy, w, h as fractions of the (augmented) image
        target["image_id"] int64 []
        target["orig_size"], target["size"]  int64 [2] (H, W) before / after augmenting
    batch = collate([data[0], data[1]])
        batch.images       float [B, 3, Hmax, Wmax], zeros where padded (bottom and right)
        batch.mask         bool [B, Hmax, Wmax], True on padding
        batch.targets      the B targets

Augmentation runs on the uint8 pixels and xyxy pixel boxes (augment.py) before the boxes
are normalised. Its generator is seeded from torch's global RNG at each `__getitem__`, so it
differs at every visit and follows the training engine's seeding (exact on resume with
num_workers 0; DataLoader workers seed their own global RNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from components.detection.boxes import xywh_to_xyxy, xyxy_to_cxcywh
from components.detection.data.augment import Augmentation
from components.detection.data.synthetic import DetectionImage
from components.stage import StageInputError
from components.vision.data.store import ImageTable, read_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Target = dict[str, Tensor]


@dataclass(frozen=True)
class DetectionRecord:
    """One image and its objects as stored: pixels uint8 [H, W, 3], boxes float32 [n, 4]
    COCO xywh in pixels, labels int64 [n] (contiguous class ids)."""

    image_id: int
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_image(cls, image_id: int, image: DetectionImage) -> DetectionRecord:
        boxes = np.array([o.bbox for o in image.objects], np.float32).reshape(-1, 4)
        labels = np.array([o.label for o in image.objects], np.int64)
        return cls(image_id, image.image, boxes, labels)


def records_from_table(table: ImageTable, where: str = "images") -> list[DetectionRecord]:
    """The records of a stored split (store.read_images): each row's `objects` "bbox" with
    its `labels`, in order. StageInputError naming `where` and the image id if a row's
    objects and labels differ in number or an object has no "bbox"."""
    if table.images.ndim != 4 or table.images.shape[-1] != 3:
        raise StageInputError(f"{where}: images {table.images.shape}, expected [N, H, W, 3]")
    records = []
    for image, image_id, objects, labels in zip(
        table.images, table.ids, table.objects, table.labels, strict=True
    ):
        if len(objects) != len(labels) or not all("bbox" in o for o in objects):
            raise StageInputError(
                f"{where}: image id {image_id}: {len(objects)} objects (each needs a bbox) "
                f"for {len(labels)} labels"
            )
        boxes = np.array([o["bbox"] for o in objects], np.float32).reshape(-1, 4)
        records.append(DetectionRecord(int(image_id), image, boxes, np.array(labels, np.int64)))
    return records


def read_split(directory: Path, split: str) -> list[DetectionRecord]:
    """The records of `directory / {split}.parquet` (a store written with objects)."""
    path = Path(directory) / f"{split}.parquet"
    return records_from_table(read_images(path), where=str(path))


class DetectionDataset(Dataset[tuple[Tensor, Target]]):
    """Map-style data set over in-memory records (see the module doc for what it yields)."""

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        augment: Augmentation | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.records = list(records)
        self.augment = augment
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        record = self.records[index]
        image = torch.from_numpy(np.ascontiguousarray(record.image)).permute(2, 0, 1)
        boxes = xywh_to_xyxy(torch.from_numpy(record.boxes).float().reshape(-1, 4))
        labels = torch.from_numpy(record.labels).long()
        orig_size = torch.tensor(image.shape[-2:])
        if self.augment is not None:
            seed = int(torch.randint(2**62, ()))
            generator = torch.Generator().manual_seed(seed)
            image, boxes, labels = self.augment(image, boxes, labels, generator)
        height, width = image.shape[-2:]
        scale = boxes.new_tensor([width, height, width, height])
        target = {
            "labels": labels,
            "boxes": xyxy_to_cxcywh(boxes / scale),
            "image_id": torch.tensor(record.image_id, dtype=torch.int64),
            "orig_size": orig_size,
            "size": torch.tensor([height, width]),
        }
        normalised = (image.float() / 255 - self.mean) / self.std
        return normalised, target


class DetectionBatch(NamedTuple):
    images: Tensor  # float [B, 3, Hmax, Wmax]
    mask: Tensor  # bool [B, Hmax, Wmax], True = padding
    targets: list[Target]


def collate(samples: Sequence[tuple[Tensor, Target]]) -> DetectionBatch:
    """Images padded at the bottom and right to the batch's largest height and width."""
    height = max(image.shape[1] for image, _ in samples)
    width = max(image.shape[2] for image, _ in samples)
    first = samples[0][0]
    images = first.new_zeros((len(samples), first.shape[0], height, width))
    mask = torch.ones((len(samples), height, width), dtype=torch.bool)
    for i, (image, _) in enumerate(samples):
        images[i, :, : image.shape[1], : image.shape[2]] = image
        mask[i, : image.shape[1], : image.shape[2]] = False
    return DetectionBatch(images, mask, [target for _, target in samples])
