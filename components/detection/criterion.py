"""DETR's set-prediction loss: match queries to targets, then score the matched pairs.

For each decoder output (the last layer, each earlier layer in "aux", the denoising queries
in "dn") the criterion computes three terms:
  ce    classification of every query: a matched query should predict its target's class,
        every other query "no object". Softmax cross-entropy over K+1 classes with the
        no-object class weighted eos_coef (a weighted mean), or, with focal=True, the sigmoid
        focal loss over K classes (no-object = all K negative) summed and divided by num_boxes
  bbox  L1 distance of the matched cxcywh boxes, summed over pairs and divided by num_boxes
  giou  1 - GIoU of the matched boxes, summed over pairs and divided by num_boxes
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from components.detection.boxes import cxcywh_to_xyxy, elementwise_generalized_box_iou
from components.detection.matcher import HungarianMatcher

DEFAULT_WEIGHTS = {"ce": 1.0, "bbox": 5.0, "giou": 2.0}

Matches = list[tuple[Tensor, Tensor]]


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """RetinaNet's focal loss per element (Lin et al. 2017), no reduction.

    logits, targets (0/1) [...] -> [...]. alpha weighs positives (1 - alpha negatives);
    alpha < 0 turns the weighting off. gamma down-weighs well-classified elements.
    """
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_true) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def mean_count_over_ranks(count: int, device: torch.device) -> Tensor:
    """A per-rank count (of target boxes) as a float scalar tensor, averaged over the ranks
    when torch.distributed is initialized (an all_reduce: every rank must call it, the same
    number of times), and clamped at >= 1 so that a batch without targets divides by 1."""
    total = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        total = total / dist.get_world_size()
    return total.clamp(min=1)


class SetCriterion(nn.Module):
    """The DETR loss over one batch.

    num_classes  K, the real classes; index K is "no object" (the last of K+1 softmax logits)
    matcher      assigns queries to targets; its `focal` must equal this criterion's
    weights      {"ce", "bbox", "giou"} -> weight in the total "loss" (missing keys take
                 DEFAULT_WEIGHTS); the same weights apply to the aux and dn terms
    eos_coef     weight of the no-object class in the softmax cross-entropy
    focal        sigmoid focal classification over K logits instead of softmax over K+1
    """

    class_weight: Tensor

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weights: dict[str, float] | None = None,
        eos_coef: float = 0.1,
        focal: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"SetCriterion: unknown loss weights {sorted(unknown)}")
        if matcher.focal != focal:
            raise ValueError(
                f"SetCriterion(focal={focal}) with a HungarianMatcher(focal={matcher.focal})"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        class_weight = torch.ones(num_classes + 1)
        class_weight[num_classes] = eos_coef
        self.register_buffer("class_weight", class_weight)

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Scalar loss terms of one batch.

        outputs:
          "logits" [B, Q, K+1] (softmax) or [B, Q, K] (focal), "boxes" [B, Q, 4] cxcywh
          "aux" (optional): one {"logits", "boxes"} per earlier decoder layer, each matched anew
          "dn" (optional): {"logits" [B, D, ...], "boxes" [B, D, 4], "targets": B pairs
                (query_idx, target_idx)}, denoising queries whose targets are known (no matching)
        targets: B dicts {"labels": int64 [n_i], "boxes": [n_i, 4] cxcywh normalised}

        Returns the unweighted terms "loss_ce", "loss_bbox", "loss_giou" (last layer),
        "loss_ce_0", ... (aux layer 0, ...), "loss_ce_dn", ...; "loss", the weighted sum of all
        of them (the one to backpropagate); and "class_error", 100 - top-1 accuracy (%) of the
        last layer's matched queries (no gradient; 0 when there are no targets).

        The box terms are divided by num_boxes, the batch's target count (averaged over ranks
        under torch.distributed, clamped >= 1); the dn terms by the count of denoising pairs
        (num_boxes x denoising groups), as DINO does.
        """
        logits, boxes = outputs["logits"], outputs["boxes"]
        num_boxes = mean_count_over_ranks(sum(len(t["labels"]) for t in targets), logits.device)
        matches = self.matcher(logits, boxes, targets)
        losses = self._terms(logits, boxes, targets, matches, num_boxes, suffix="")
        losses["class_error"] = self._class_error(logits, targets, matches)

        for layer, aux in enumerate(outputs.get("aux", [])):
            aux_matches = self.matcher(aux["logits"], aux["boxes"], targets)
            terms = self._terms(
                aux["logits"], aux["boxes"], targets, aux_matches, num_boxes, f"_{layer}"
            )
            losses.update(terms)

        if "dn" in outputs:
            dn = outputs["dn"]
            num_pairs = mean_count_over_ranks(sum(len(q) for q, _ in dn["targets"]), logits.device)
            losses.update(
                self._terms(dn["logits"], dn["boxes"], targets, dn["targets"], num_pairs, "_dn")
            )

        weighted = [
            self.weights[name.split("_")[1]] * value
            for name, value in losses.items()
            if name.startswith("loss_")
        ]
        losses["loss"] = torch.stack(weighted).sum()
        return losses

    def _terms(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: list[dict[str, Tensor]],
        matches: Matches,
        num_boxes: Tensor,
        suffix: str,
    ) -> dict[str, Tensor]:
        """{"loss_ce", "loss_bbox", "loss_giou"} + suffix for one output and its matches."""
        batch_idx, query_idx = _matched_queries(matches, logits.device)
        labels = _matched_targets(targets, matches, "labels").to(logits.device)
        target_boxes = _matched_targets(targets, matches, "boxes").to(boxes)

        # Every query's class: its matched target's, else no object (index K).
        classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        classes[batch_idx, query_idx] = labels
        if self.focal:
            self._check_logits(logits, self.num_classes)
            # No object is the all-zero row: one-hot over K+1, then drop column K.
            onehot = F.one_hot(classes, self.num_classes + 1)[..., : self.num_classes].to(
                logits.dtype
            )
            loss_ce = (
                sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum()
                / num_boxes
            )
        else:
            self._check_logits(logits, self.num_classes + 1)
            weight = self.class_weight.to(logits.dtype)  # cross_entropy wants matching dtypes
            loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, weight=weight)

        matched_boxes = boxes[batch_idx, query_idx]  # [M, 4]
        loss_bbox = F.l1_loss(matched_boxes, target_boxes, reduction="sum") / num_boxes
        giou = elementwise_generalized_box_iou(
            cxcywh_to_xyxy(matched_boxes), cxcywh_to_xyxy(target_boxes)
        )
        loss_giou = (1 - giou).sum() / num_boxes
        return {
            f"loss_ce{suffix}": loss_ce,
            f"loss_bbox{suffix}": loss_bbox,
            f"loss_giou{suffix}": loss_giou,
        }

    @torch.no_grad()
    def _class_error(
        self, logits: Tensor, targets: list[dict[str, Tensor]], matches: Matches
    ) -> Tensor:
        """100 - top-1 accuracy (%) of the matched queries' classes; a scalar tensor."""
        batch_idx, query_idx = _matched_queries(matches, logits.device)
        labels = _matched_targets(targets, matches, "labels").to(logits.device)
        if labels.numel() == 0:
            return torch.zeros((), device=logits.device)
        predicted = logits[batch_idx, query_idx].argmax(-1)
        return 100 - 100 * (predicted == labels).float().mean()

    def _check_logits(self, logits: Tensor, expected: int) -> None:
        if logits.shape[-1] != expected:
            form = "sigmoid (focal) over K" if self.focal else "softmax over K+1"
            raise ValueError(
                f"SetCriterion: logits [..., {logits.shape[-1]}], expected {expected} "
                f"({form} classes, K={self.num_classes})"
            )


def _matched_queries(matches: Matches, device: torch.device) -> tuple[Tensor, Tensor]:
    """(image index, query index) of every matched pair, each int64 [M] on device."""
    batch_idx = torch.cat(
        [torch.full_like(query, image) for image, (query, _) in enumerate(matches)]
    )
    query_idx = torch.cat([query for query, _ in matches])
    return batch_idx.to(device), query_idx.to(device)


def _matched_targets(targets: list[dict[str, Tensor]], matches: Matches, key: str) -> Tensor:
    """targets[i][key] of every matched pair, in the order of `_matched_queries`: [M, ...]."""
    return torch.cat(
        [
            target[key][idx.to(target[key].device)]
            for target, (_, idx) in zip(targets, matches, strict=True)
        ]
    )
