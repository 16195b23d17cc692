"""Hungarian matching of a detector's queries to an image's target objects (DETR).

Each image's Q queries are assigned one-to-one to its n targets (min(Q, n) pairs) so that the
summed cost is least; unmatched queries are then trained as "no object". The cost of a pair
is a weighted sum of a classification cost, the L1 distance of the cxcywh boxes and minus
their generalized IoU. Costs are computed for the whole batch against all targets at once
and split per image before `scipy.optimize.linear_sum_assignment`, as DETR does.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from components.detection.boxes import cxcywh_to_xyxy, generalized_box_iou

# Non-finite costs (a diverged or overflowed prediction) would make linear_sum_assignment
# raise; as the worst finite cost they are matched only when nothing else can be.
_WORST_COST = torch.finfo(torch.float32).max


@dataclass(frozen=True)
class HungarianMatcher:
    """Weights of the matching cost terms and the classification cost's form.

    cost_class  weight of the class cost: -p(target class) from a softmax over K+1 logits, or,
                with focal=True, the focal-loss difference of sigmoid logits over K classes
                (Deformable DETR): alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))
    cost_bbox   weight of the L1 distance between cxcywh boxes
    cost_giou   weight of -GIoU
    """

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    focal: bool = False
    alpha: float = 0.25
    gamma: float = 2.0

    def __post_init__(self) -> None:
        if self.cost_class == 0 and self.cost_bbox == 0 and self.cost_giou == 0:
            raise ValueError("HungarianMatcher: at least one of the cost weights must be non-zero")

    @torch.no_grad()
    def matching_cost(
        self, logits: Tensor, boxes: Tensor, target_labels: Tensor, target_boxes: Tensor
    ) -> Tensor:
        """Cost of every query against every target of the batch.

        logits [B, Q, K+1] (softmax) or [B, Q, K] (focal), boxes [B, Q, 4] cxcywh,
        target_labels int64 [T], target_boxes [T, 4] cxcywh (all images' targets, concatenated)
        -> cost [B, Q, T]. Entry [b, q, t] is only meaningful where target t is image b's.
        """
        batch, queries = logits.shape[:2]
        flat_logits = logits.flatten(0, 1)  # [B*Q, C]
        flat_boxes = boxes.flatten(0, 1)  # [B*Q, 4]
        if self.focal:
            # -log p = softplus(-x) and -log(1-p) = softplus(x), stable for large |x|.
            prob = flat_logits.sigmoid()
            pos = self.alpha * (1 - prob) ** self.gamma * F.softplus(-flat_logits)
            neg = (1 - self.alpha) * prob**self.gamma * F.softplus(flat_logits)
            class_cost = (pos - neg)[:, target_labels]
        else:
            # -p rather than -log p, as DETR: bounded, commensurate with the box costs.
            class_cost = -flat_logits.softmax(-1)[:, target_labels]
        bbox_cost = torch.cdist(flat_boxes, target_boxes, p=1)
        giou_cost = -generalized_box_iou(cxcywh_to_xyxy(flat_boxes), cxcywh_to_xyxy(target_boxes))
        cost = (
            self.cost_class * class_cost + self.cost_bbox * bbox_cost + self.cost_giou * giou_cost
        )
        return cost.view(batch, queries, -1)

    @torch.no_grad()
    def __call__(
        self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        logits [B, Q, K+1] (softmax) or [B, Q, K] (focal), boxes [B, Q, 4] cxcywh normalised,
        targets: B dicts {"labels": int64 [n_i], "boxes": [n_i, 4] cxcywh normalised}
        -> B pairs (query_idx int64 [m_i], target_idx int64 [m_i]) on the CPU, m_i = min(Q, n_i),
        query_idx ascending; an image without targets gets two empty tensors.
        """
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]} images")
        target_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)
        cost = self.matching_cost(logits, boxes, target_labels, target_boxes)
        cost = torch.nan_to_num(
            cost.cpu().double(), nan=_WORST_COST, posinf=_WORST_COST, neginf=_WORST_COST
        )
        sizes = [len(t["labels"]) for t in targets]
        matches = []
        for image, image_cost in enumerate(cost.split(sizes, dim=-1)):
            query_idx, target_idx = linear_sum_assignment(image_cost[image].numpy())
            matches.append(
                (
                    torch.as_tensor(query_idx, dtype=torch.int64),
                    torch.as_tensor(target_idx, dtype=torch.int64),
                )
            )
        return matches
