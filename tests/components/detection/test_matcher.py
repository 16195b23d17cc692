import itertools

import pytest
import torch

from components.detection.boxes import cxcywh_to_xyxy, generalized_box_iou
from components.detection.matcher import HungarianMatcher

K = 4  # real classes


def random_boxes(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """[*shape, 4] cxcywh boxes with centres in (0.2, 0.8) and sizes in (0.05, 0.4)."""
    centres = 0.2 + 0.6 * torch.rand(*shape, 2, generator=gen)
    sizes = 0.05 + 0.35 * torch.rand(*shape, 2, generator=gen)
    return torch.cat([centres, sizes], dim=-1)


def random_batch(queries: int, sizes: list[int], focal: bool, seed: int):
    """(logits [B, Q, K or K+1], boxes [B, Q, 4], targets) with B = len(sizes)."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(len(sizes), queries, K if focal else K + 1, generator=gen)
    boxes = random_boxes((len(sizes), queries), gen)
    targets = [
        {"labels": torch.randint(0, K, (n,), generator=gen), "boxes": random_boxes((n,), gen)}
        for n in sizes
    ]
    return logits, boxes, targets


@pytest.mark.parametrize("focal", [False, True])
def test_batched_matching_equals_per_image_matching(focal):
    matcher = HungarianMatcher(focal=focal)
    logits, boxes, targets = random_batch(queries=7, sizes=[3, 0, 7, 1], focal=focal, seed=0)
    batched = matcher(logits, boxes, targets)
    assert len(batched) == 4
    for image, (query_idx, target_idx) in enumerate(batched):
        alone = matcher(logits[image : image + 1], boxes[image : image + 1], [targets[image]])
        assert torch.equal(query_idx, alone[0][0])
        assert torch.equal(target_idx, alone[0][1])
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == len(targets[image]["labels"])
        assert len(set(target_idx.tolist())) == len(target_idx)  # one-to-one


def test_images_without_targets_get_empty_indices():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_batch(queries=5, sizes=[0, 0], focal=False, seed=1)
    for query_idx, target_idx in matcher(logits, boxes, targets):
        assert query_idx.shape == target_idx.shape == (0,)
        assert query_idx.dtype == target_idx.dtype == torch.int64


@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize(("queries", "n"), [(4, 1), (4, 3), (5, 5), (3, 5)])
def test_matching_is_the_brute_force_least_cost_assignment(focal, queries, n):
    matcher = HungarianMatcher(focal=focal)
    for seed in range(5):
        logits, boxes, targets = random_batch(queries, [n], focal, seed=100 + seed)
        cost = matcher.matching_cost(logits, boxes, targets[0]["labels"], targets[0]["boxes"])[0]
        # Every injective map of the smaller side into the larger one.
        if n <= queries:
            pairs = [
                list(zip(qs, range(n), strict=True))
                for qs in itertools.permutations(range(queries), n)
            ]
        else:
            pairs = [
                list(zip(range(queries), ts, strict=True))
                for ts in itertools.permutations(range(n), queries)
            ]
        best = min(pairs, key=lambda p: sum(cost[q, t].item() for q, t in p))
        query_idx, target_idx = matcher(logits, boxes, targets)[0]
        assert sorted(zip(query_idx.tolist(), target_idx.tolist(), strict=True)) == sorted(best)


def test_matching_cost_on_one_pair_by_hand():
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    logits = torch.tensor([[[0.0, 1.0, 2.0]]])  # K = 2, one query
    box = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])
    label, target = torch.tensor([1]), torch.tensor([[0.6, 0.5, 0.2, 0.4]])
    prob = torch.softmax(logits[0, 0], -1)[1]
    l1 = 0.1 + 0.0 + 0.0 + 0.2
    giou = generalized_box_iou(cxcywh_to_xyxy(box[0]), cxcywh_to_xyxy(target))[0, 0]
    expected = -prob + 5 * l1 - 2 * giou
    torch.testing.assert_close(
        matcher.matching_cost(logits, box, label, target), expected.view(1, 1, 1)
    )


def test_shuffled_perfect_predictions_are_matched_to_their_targets():
    gen = torch.Generator().manual_seed(2)
    target_boxes = random_boxes((3,), gen)
    labels = torch.tensor([2, 0, 3])
    # Queries 4, 1, 0 predict targets 0, 1, 2 exactly; queries 2, 3 are noise.
    boxes = random_boxes((1, 5), gen)
    logits = torch.full((1, 5, K + 1), -5.0)
    for query, target in [(4, 0), (1, 1), (0, 2)]:
        boxes[0, query] = target_boxes[target]
        logits[0, query, labels[target]] = 5.0
    query_idx, target_idx = HungarianMatcher()(
        logits, boxes, [{"labels": labels, "boxes": target_boxes}]
    )[0]
    assert query_idx.tolist() == [0, 1, 4]  # ascending
    assert target_idx.tolist() == [2, 1, 0]


@pytest.mark.parametrize("corrupt", ["nan_box", "inf_logit"])
def test_a_non_finite_prediction_is_left_unmatched_when_others_can_be(corrupt):
    logits, boxes, targets = random_batch(queries=4, sizes=[3], focal=False, seed=3)
    if corrupt == "nan_box":
        boxes[0, 1] = float("nan")
    else:
        logits[0, 1, 0] = float("inf")  # softmax -> NaN
    query_idx, _ = HungarianMatcher()(logits, boxes, targets)[0]
    assert query_idx.tolist() == [0, 2, 3]


def test_all_zero_cost_weights_are_rejected():
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
