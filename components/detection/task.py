"""The training engine's `Task` for DETR: data sets, model, param groups and the set loss.

Param groups: "backbone" at `backbone_lr_scale` of the schedule's LR (DETR trains its CNN at a
tenth of the transformer's), "transformer" (everything else). One scalar loss, the criterion's
weighted sum over the last layer, the auxiliary layers and the denoising queries; the engine
clips it at `train.clip_grad_norm` (DETR's 0.1).

Batches are `DetectionBatch`es (padded images, pixel mask, targets); denoising queries are
built per training batch from its targets, with the engine's seeded RNG (so a resumed run
draws the same noise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn
from torch.utils.data import Dataset

from components.detection.config import DetectorConfig
from components.detection.criterion import SetCriterion
from components.detection.data.augment import (
    Augmentation,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
)
from components.detection.data.dataset import DetectionDataset, DetectionRecord, collate
from components.detection.denoising import make_denoising_queries
from components.detection.matcher import HungarianMatcher
from components.detection.model import Detr
from components.train.groups import ParamGroup


def augmentation(config: DetectorConfig) -> Augmentation | None:
    steps: list[Augmentation] = []
    cfg = config.augment
    if cfg.flip > 0:
        steps.append(RandomHorizontalFlip(cfg.flip))
    if cfg.scale is not None:
        steps.append(RandomScale(*cfg.scale))
    if cfg.crop > 0:
        steps.append(RandomCrop(p=cfg.crop))
    return Compose(steps) if steps else None


def criterion(config: DetectorConfig, num_classes: int) -> SetCriterion:
    loss = config.model.loss
    focal = loss.class_loss == "focal"
    matcher = HungarianMatcher(
        cost_class=loss.ce_weight, cost_bbox=loss.bbox_weight, cost_giou=loss.giou_weight,
        focal=focal,
    )  # fmt: skip
    weights = {"ce": loss.ce_weight, "bbox": loss.bbox_weight, "giou": loss.giou_weight}
    return SetCriterion(num_classes, matcher, weights, eos_coef=loss.eos_coef, focal=focal)


class DetrTask:
    def __init__(
        self,
        config: DetectorConfig,
        num_classes: int,
        train: Sequence[DetectionRecord],
        val: Sequence[DetectionRecord] = (),
    ):
        self.config, self.num_classes = config, num_classes
        # typed as the engine's Task protocol declares them (mutable attributes: invariant)
        self.train_data: Dataset = DetectionDataset(train, augment=augmentation(config))
        self.val_data: Dataset | None = DetectionDataset(val) if val else None
        self.criterion = criterion(config, num_classes)

    def model(self) -> Detr:
        return Detr(self.config.model, self.num_classes)

    def collate(self, samples):
        return collate(samples)

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        assert isinstance(model, Detr)
        rest = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
        return [
            ParamGroup("backbone", model.backbone.parameters(),
                       lr_scale=self.config.backbone_lr_scale),
            ParamGroup("transformer", rest),
        ]  # fmt: skip

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        assert isinstance(model, Detr)
        cfg = self.config.model
        dn = None
        if cfg.denoising.enabled and model.training:  # noise from the engine's seeded RNG
            dn = make_denoising_queries(
                batch.targets, self.num_classes, cfg.denoising, model.label_embedding,
                cfg.num_queries,
            )  # fmt: skip
        outputs = model(batch.images, batch.mask, dn)
        if not cfg.loss.aux_loss:
            outputs.pop("aux")
        if dn is not None:  # the last layer's denoising predictions, their targets known
            outputs["dn"] = {**outputs["dn"][-1], "targets": dn.matches}
        terms = self.criterion(outputs, batch.targets)
        # the last layer's terms, the denoising ones and class_error (not every aux layer's)
        metrics: dict[str, float | Tensor] = {
            k: v for k, v in terms.items() if k != "loss" and not k[-1].isdigit()
        }
        return terms["loss"], metrics
