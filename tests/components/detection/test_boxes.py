import pytest
import torch

from components.detection.boxes import (
    box_area,
    box_iou,
    cxcywh_to_xyxy,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def random_xyxy(n: int, seed: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """[*batch, n, 4] valid xyxy boxes inside the unit square, float64."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand(*batch, n, 2, 2, generator=gen, dtype=torch.float64)
    low, high = corners.min(dim=-2).values, corners.max(dim=-2).values
    return torch.cat([low, high], dim=-1)


def test_conversions_on_a_hand_case():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 8.0]])
    assert xyxy_to_cxcywh(xyxy).tolist() == [[3.0, 5.0, 4.0, 6.0]]
    assert xyxy_to_xywh(xyxy).tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert cxcywh_to_xyxy(torch.tensor([[3.0, 5.0, 4.0, 6.0]])).tolist() == xyxy.tolist()
    assert xywh_to_xyxy(torch.tensor([[1.0, 2.0, 4.0, 6.0]])).tolist() == xyxy.tolist()


@pytest.mark.parametrize(
    ("to_format", "from_format"),
    [(xyxy_to_cxcywh, cxcywh_to_xyxy), (xyxy_to_xywh, xywh_to_xyxy)],
)
def test_conversions_round_trip_with_batch_dims(to_format, from_format):
    xyxy = random_xyxy(5, seed=0, batch=(2, 3))
    converted = to_format(xyxy)
    assert converted.shape == (2, 3, 5, 4)
    torch.testing.assert_close(from_format(converted), xyxy)
    torch.testing.assert_close(to_format(from_format(converted)), converted)


def test_area_and_iou_on_a_hand_case():
    # a: 2x2 at the origin; b: 2x2 shifted by (1, 1) -> overlap 1, union 4 + 4 - 1 = 7;
    # c: far away -> no overlap.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    others = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 7.0], [0.0, 0.0, 2.0, 2.0]])
    assert box_area(others).tolist() == [4.0, 2.0, 4.0]
    iou, union = box_iou(a, others)
    assert iou.shape == union.shape == (1, 3)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0, 1.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 6.0, 4.0]]))
    # GIoU of a, b: enclosing box 3x3 = 9, so 1/7 - (9 - 7)/9.
    torch.testing.assert_close(generalized_box_iou(a, others[:1]), torch.tensor([[1 / 7 - 2 / 9]]))


def test_giou_is_one_on_identical_boxes_and_symmetric_in_range():
    boxes1, boxes2 = random_xyxy(6, seed=1), random_xyxy(4, seed=2)
    torch.testing.assert_close(
        torch.diagonal(generalized_box_iou(boxes1, boxes1)), torch.ones(6).double()
    )
    giou = generalized_box_iou(boxes1, boxes2)
    assert giou.shape == (6, 4)
    torch.testing.assert_close(giou, generalized_box_iou(boxes2, boxes1).T)
    assert ((giou >= -1) & (giou <= 1)).all()
    # GIoU never exceeds IoU, and equals it when one box contains the other.
    iou, _ = box_iou(boxes1, boxes2)
    assert (giou <= iou + 1e-12).all()


def test_giou_of_disjoint_boxes_is_negative_and_falls_with_distance():
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    apart = torch.tensor([[2.0, 0.0, 3.0, 1.0], [10.0, 0.0, 11.0, 1.0], [1e6, 0.0, 1e6 + 1, 1.0]])
    giou = generalized_box_iou(unit, apart)[0]
    # (enclosing - union) / enclosing with union 2: 1 - 2/3, 1 - 2/11, -> -1.
    torch.testing.assert_close(giou[:2], torch.tensor([-1 / 3, -9 / 11]))
    assert giou[2] > -1
    assert giou[2] < -0.99999


def test_pairwise_functions_broadcast_over_batch_dims():
    boxes1, boxes2 = random_xyxy(3, seed=3, batch=(2,)), random_xyxy(5, seed=4, batch=(2,))
    giou = generalized_box_iou(boxes1, boxes2)
    assert giou.shape == (2, 3, 5)
    for b in range(2):
        torch.testing.assert_close(giou[b], generalized_box_iou(boxes1[b], boxes2[b]))
    torch.testing.assert_close(
        elementwise_generalized_box_iou(boxes1, boxes2[:, :3]),
        torch.diagonal(generalized_box_iou(boxes1, boxes2[:, :3]), dim1=-2, dim2=-1),
    )


def test_degenerate_boxes_give_finite_values_and_gradients():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    inverted = torch.tensor([[0.6, 0.6, 0.4, 0.4]])
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert box_area(inverted).item() == 0.0
    iou, _ = box_iou(point, torch.cat([point.detach(), inverted, unit]))
    assert iou.tolist() == [[0.0, 0.0, 0.0]]
    beside = torch.tensor([[1.5, 0.0, 2.5, 1.0]])
    giou = generalized_box_iou(point, torch.cat([point.detach(), unit, beside]))
    # Same point: no union, no enclosing area -> 0. Inside the unit box: the enclosing box is
    # the union -> 0. Left of `beside`: enclosing [0.5, 0, 2.5, 1], 0 - (2 - 1) / 2.
    assert giou.tolist() == [[0.0, 0.0, -0.5]]
    giou.sum().backward()
    assert torch.isfinite(point.grad).all()
