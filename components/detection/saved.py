"""The trained detector as an object: network + class names + save format.

    detector = Detector.load("data/detectors/shapes")
    found = detector.detect(images)      # uint8 [N, H, W, 3] -> [Detections] in pixels
    detector.save(out)

On disk (`components.artifact`, format "loom-detector" version 1): config.json {"model" (the
DetrConfig), "classes", "image_size", "mean", "std"} and model.safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components import artifact
from components.config import build, identity
from components.detection.config import DetrConfig
from components.detection.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from components.detection.model import Detr
from components.detection.postprocess import Detections, postprocess
from components.stage import StageInputError

KIND, VERSION = "detector", 1
BATCH = 32  # images per forward pass in `detect`


class Detector:
    def __init__(self, network: Detr, classes: Sequence[str], image_size: int, top_k: int = 100):
        if len(classes) != network.num_classes:
            raise ValueError(f"{len(classes)} class names for {network.num_classes} classes")
        self.network = network.eval()
        self.classes, self.image_size, self.top_k = tuple(classes), image_size, top_k

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def detect_fitted(
        self, images: Sequence[np.ndarray], scale: float | None = None, canvas: bool = False
    ) -> list[Detections]:
        """As `detect`, each image first scaled (bilinear) so that its longer side is the
        training `image_size` (a detector sees objects at the scale it learned them), or by
        `scale`. `canvas`: the scaled image is then set in the middle of a square canvas of
        the training size (or its own, if larger), filled with the median colour of the
        image's border (its background), so the canvas has the extent the detector learnt
        too. Boxes come back in the pixels of the image as given."""
        placed, moves = [], []
        for image in images:
            image = np.asarray(image)
            h, w = image.shape[:2]
            factor = self.image_size / max(h, w) if scale is None else scale
            size = (max(1, round(w * factor)), max(1, round(h * factor)))
            scaled = np.array(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
            left = top = 0
            if canvas:
                side = max(self.image_size, *size)
                left, top = (side - size[0]) // 2, (side - size[1]) // 2
                border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
                board = np.empty((side, side, 3), np.uint8)
                board[:] = np.median(border, axis=0).astype(np.uint8)
                board[top : top + size[1], left : left + size[0]] = scaled
                scaled = board
            placed.append(scaled)
            offset = torch.tensor([left, top] * 2, dtype=torch.float32)
            moves.append((offset, torch.tensor([w / size[0], h / size[1]] * 2)))
        return [
            Detections(d.scores, d.labels, (d.boxes - offset) * factor)
            for d, (offset, factor) in zip(self.detect(placed), moves, strict=True)
        ]

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray] | np.ndarray) -> list[Detections]:
        """uint8 RGB images [H, W, 3] (any sizes; padded per batch) -> detections each, boxes
        xyxy in that image's pixels, best first."""
        found: list[Detections] = []
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        focal = self.network.config.loss.class_loss == "focal"
        for start in range(0, len(images), BATCH):
            chunk = [np.asarray(im) for im in images[start : start + BATCH]]
            for i, image in enumerate(chunk):
                if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                    raise ValueError(
                        f"image {start + i}: {image.dtype} {image.shape}, expected uint8 [H, W, 3]"
                    )
            h = max(im.shape[0] for im in chunk)
            w = max(im.shape[1] for im in chunk)
            batch = torch.zeros(len(chunk), 3, h, w)
            mask = torch.ones(len(chunk), h, w, dtype=torch.bool)
            for i, image in enumerate(chunk):
                pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
                batch[i, :, : image.shape[0], : image.shape[1]] = (pixels - mean) / std
                mask[i, : image.shape[0], : image.shape[1]] = False
            out = self.network(batch.to(self.device), mask.to(self.device))
            # boxes are relative to the unpadded image (the targets were), so scale by its size
            sizes = torch.tensor([im.shape[:2] for im in chunk], device=self.device)
            found += postprocess(out["logits"], out["boxes"], sizes, self.top_k, focal)
        return [Detections(d.scores.cpu(), d.labels.cpu(), d.boxes.cpu()) for d in found]

    def save(self, directory: str | Path) -> Path:
        fields = {
            "model": identity(self.network.config),
            "classes": list(self.classes),
            "image_size": self.image_size,
            "top_k": self.top_k,
        }
        state = artifact.module_state(self.network)
        return artifact.save(directory, KIND, VERSION, fields, state)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Detector:
        fields = artifact.read_config(directory, KIND, VERSION)
        where = str(Path(directory) / artifact.CONFIG_FILE)
        try:
            config = build(DetrConfig, fields["model"], f"{where}: model")
            classes = [str(c) for c in fields["classes"]]
            network = Detr(config, len(classes))
            image_size, top_k = int(fields["image_size"]), int(fields["top_k"])
        except (KeyError, TypeError, ValueError) as err:
            raise StageInputError(f"{where}: not a valid detector config: {err}") from None
        artifact.load_module(directory, network)
        return cls(network.to(device), classes, image_size, top_k)
