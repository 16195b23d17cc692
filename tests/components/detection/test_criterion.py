import pytest
import torch
from torch import nn

from components.detection import criterion as criterion_module
from components.detection.boxes import cxcywh_to_xyxy, elementwise_generalized_box_iou
from components.detection.criterion import SetCriterion, sigmoid_focal_loss
from components.detection.matcher import HungarianMatcher

K, Q = 4, 6  # real classes, queries
SIZES = [3, 0, 5]  # targets per image; one image without any


def random_boxes(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """[*shape, 4] cxcywh boxes with centres in (0.2, 0.8) and sizes in (0.05, 0.4)."""
    centres = 0.2 + 0.6 * torch.rand(*shape, 2, generator=gen)
    sizes = 0.05 + 0.35 * torch.rand(*shape, 2, generator=gen)
    return torch.cat([centres, sizes], dim=-1)


def random_targets(gen: torch.Generator, sizes: list[int] = SIZES) -> list[dict[str, torch.Tensor]]:
    return [
        {"labels": torch.randint(0, K, (n,), generator=gen), "boxes": random_boxes((n,), gen)}
        for n in sizes
    ]


def random_layers(
    layers: int, classes: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [L, B, Q, classes], boxes [L, B, Q, 4]): one output per decoder layer."""
    logits = 2 * torch.randn(layers, len(SIZES), Q, classes, generator=gen)
    return logits, random_boxes((layers, len(SIZES), Q), gen)


def detr_outputs(logits: torch.Tensor, boxes: torch.Tensor) -> dict:
    """Loom's outputs dict from per-layer stacks: the last layer plus "aux" for the others."""
    aux = [{"logits": lg, "boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)]
    return {"logits": logits[-1], "boxes": boxes[-1], "aux": aux}


def softmax_criterion(**kwargs) -> SetCriterion:
    return SetCriterion(K, HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2), **kwargs)


def focal_criterion() -> SetCriterion:
    return SetCriterion(K, HungarianMatcher(focal=True), focal=True)


def test_equals_transformers_detr_loss_with_auxiliary_layers():
    pytest.importorskip("transformers")
    from transformers import DetrConfig
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    gen = torch.Generator().manual_seed(0)
    logits, boxes = random_layers(3, K + 1, gen)
    targets = random_targets(gen)
    # A config only (no model, no backbone weights): its loss fields are DETR's defaults.
    config = DetrConfig(
        use_timm_backbone=False, num_labels=K, auxiliary_loss=True, decoder_layers=3
    )
    assert (config.class_cost, config.bbox_cost, config.giou_cost) == (1, 5, 2)
    assert (config.eos_coefficient, config.bbox_loss_coefficient, config.giou_loss_coefficient) == (
        0.1,
        5,
        2,
    )
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    hf_loss, hf_terms, _ = ForObjectDetectionLoss(
        logits[-1], hf_labels, "cpu", boxes[-1], config, outputs_class=logits, outputs_coord=boxes
    )

    ours = softmax_criterion(eos_coef=0.1)(detr_outputs(logits, boxes), targets)
    names = [
        f"loss_{kind}{suffix}" for suffix in ["", "_0", "_1"] for kind in ["ce", "bbox", "giou"]
    ]
    assert set(names) <= set(hf_terms)
    for name in names:
        torch.testing.assert_close(ours[name], hf_terms[name], rtol=0, atol=1e-5, msg=name)
    torch.testing.assert_close(ours["loss"], hf_loss, rtol=0, atol=1e-5)


def test_focal_variant_equals_transformers_deformable_detr_loss():
    pytest.importorskip("transformers")
    from transformers import DeformableDetrConfig
    from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

    gen = torch.Generator().manual_seed(1)
    logits, boxes = random_layers(2, K, gen)
    targets = random_targets(gen)
    config = DeformableDetrConfig(
        use_timm_backbone=False, num_labels=K, auxiliary_loss=True, decoder_layers=2
    )
    assert config.focal_alpha == 0.25
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    hf_loss, hf_terms, _ = DeformableDetrForObjectDetectionLoss(
        logits[-1], hf_labels, "cpu", boxes[-1], config, outputs_class=logits, outputs_coord=boxes
    )

    ours = focal_criterion()(detr_outputs(logits, boxes), targets)
    for name in ["loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"]:
        torch.testing.assert_close(ours[name], hf_terms[name], rtol=0, atol=1e-5, msg=name)
    torch.testing.assert_close(ours["loss"], hf_loss, rtol=0, atol=1e-5)


def test_perfect_predictions_have_near_zero_losses_and_no_class_error():
    gen = torch.Generator().manual_seed(2)
    targets = random_targets(gen)
    # Query i of image b predicts target i exactly; the remaining queries predict no object.
    boxes = random_boxes((len(SIZES), Q), gen)
    logits = torch.full((len(SIZES), Q, K + 1), -10.0)
    logits[..., K] = 10.0
    for image, target in enumerate(targets):
        n = len(target["labels"])
        boxes[image, :n] = target["boxes"]
        logits[image, torch.arange(n), K] = -10.0
        logits[image, torch.arange(n), target["labels"]] = 10.0
    losses = softmax_criterion()({"logits": logits, "boxes": boxes}, targets)
    assert losses["loss_bbox"].item() < 1e-6
    assert losses["loss_giou"].item() < 1e-6
    assert losses["loss_ce"].item() < 1e-6
    assert losses["class_error"].item() == 0.0


@pytest.mark.parametrize("make", [softmax_criterion, focal_criterion])
def test_float64_predictions_keep_their_dtype(make):
    gen = torch.Generator().manual_seed(10)
    logits, boxes = random_layers(2, K + 1 if make is softmax_criterion else K, gen)
    losses = make()(detr_outputs(logits.double(), boxes.double()), random_targets(gen))
    assert all(
        value.dtype == torch.float64 for name, value in losses.items() if name != "class_error"
    )


def test_total_is_the_weighted_sum_of_every_term():
    gen = torch.Generator().manual_seed(3)
    logits, boxes = random_layers(2, K + 1, gen)
    weights = {"ce": 2.0, "bbox": 3.0, "giou": 0.5}
    losses = softmax_criterion(weights=weights)(detr_outputs(logits, boxes), random_targets(gen))
    terms = [name for name in losses if name.startswith("loss_")]
    assert sorted(terms) == sorted(
        f"loss_{kind}{suffix}" for kind in weights for suffix in ["", "_0"]
    )
    expected = sum(weights[name.split("_")[1]] * losses[name] for name in terms)
    torch.testing.assert_close(losses["loss"], expected)


def test_denoising_terms_use_the_given_pairs_and_their_own_count():
    gen = torch.Generator().manual_seed(4)
    targets = random_targets(gen)
    # Two denoising groups: queries g * 5 + i are noised copies of target i (5 = max targets).
    dn_boxes = random_boxes((len(SIZES), 10), gen)
    dn_logits = torch.randn(len(SIZES), 10, K + 1, generator=gen)
    pairs = [
        (torch.cat([torch.arange(n), 5 + torch.arange(n)]), torch.arange(n).repeat(2))
        for n in SIZES
    ]
    outputs = {
        "logits": torch.randn(len(SIZES), Q, K + 1, generator=gen),
        "boxes": random_boxes((len(SIZES), Q), gen),
        "dn": {"logits": dn_logits, "boxes": dn_boxes, "targets": pairs},
    }
    losses = softmax_criterion()(outputs, targets)

    matched = torch.cat([dn_boxes[b, q] for b, (q, _) in enumerate(pairs)])
    wanted = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, pairs, strict=True)])
    num_pairs = 2 * sum(SIZES)
    torch.testing.assert_close(losses["loss_bbox_dn"], (matched - wanted).abs().sum() / num_pairs)
    giou = elementwise_generalized_box_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(wanted))
    torch.testing.assert_close(losses["loss_giou_dn"], (1 - giou).sum() / num_pairs)
    classes = torch.full((len(SIZES), 10), K)
    for b, ((q, j), t) in enumerate(zip(pairs, targets, strict=True)):
        classes[b, q] = t["labels"][j]
    weight = torch.ones(K + 1)
    weight[K] = 0.1
    expected_ce = nn.functional.cross_entropy(
        dn_logits.flatten(0, 1), classes.flatten(), weight=weight
    )
    torch.testing.assert_close(losses["loss_ce_dn"], expected_ce)


def test_class_error_counts_wrong_top1_among_matched_queries():
    # One image, two targets matched by box to queries 0 and 1; query 1 predicts the wrong class.
    targets = [
        {
            "labels": torch.tensor([1, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]),
        }
    ]
    boxes = torch.cat([targets[0]["boxes"], torch.tensor([[0.5, 0.5, 0.9, 0.9]])])[None]
    logits = torch.zeros(1, 3, K + 1)
    logits[0, 0, 1] = 3.0
    logits[0, 1, 3] = 3.0
    losses = softmax_criterion()({"logits": logits, "boxes": boxes}, targets)
    assert losses["class_error"].item() == pytest.approx(50.0)


@pytest.mark.parametrize("make", [softmax_criterion, focal_criterion])
def test_a_batch_without_targets_gives_finite_losses(make):
    gen = torch.Generator().manual_seed(5)
    classes = K + 1 if make is softmax_criterion else K
    logits = torch.randn(2, Q, classes, generator=gen, requires_grad=True)
    outputs = {"logits": logits, "boxes": random_boxes((2, Q), gen)}
    losses = make()(outputs, random_targets(gen, sizes=[0, 0]))
    assert losses["loss_bbox"].item() == losses["loss_giou"].item() == 0.0
    assert losses["class_error"].item() == 0.0
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_focal_classification_is_summed_over_queries_and_classes_per_box():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 3, K, generator=gen)
    target = {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]])
    losses = focal_criterion()({"logits": logits, "boxes": boxes}, [target])
    onehot = torch.zeros(1, 3, K)
    onehot[0, 0, 2] = 1.0  # query 0 is the exact box
    expected = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0).sum() / 1
    torch.testing.assert_close(losses["loss_ce"], expected)


def test_num_boxes_is_averaged_over_ranks(monkeypatch):
    # Simulate 2 ranks, the other holding 7 targets: num_boxes = (8 + 7) / 2.
    monkeypatch.setattr(criterion_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(criterion_module.dist, "all_reduce", lambda total: total.add_(7.0))
    gen = torch.Generator().manual_seed(7)
    logits, boxes = random_layers(1, K + 1, gen)
    targets = random_targets(gen)
    criterion = softmax_criterion()
    matches = criterion.matcher(logits[0], boxes[0], targets)
    matched = torch.cat([boxes[0, b, q] for b, (q, _) in enumerate(matches)])
    wanted = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, matches, strict=True)])
    losses = criterion({"logits": logits[0], "boxes": boxes[0]}, targets)
    torch.testing.assert_close(losses["loss_bbox"], (matched - wanted).abs().sum() / 7.5)


def test_loss_falls_over_sgd_steps_on_a_fixed_batch():
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    targets = random_targets(gen)
    features = torch.randn(len(SIZES), Q, 16, generator=gen)
    head = nn.Linear(16, K + 1 + 4)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.02)
    criterion = softmax_criterion()
    history = []
    for _ in range(20):
        out = head(features)
        losses = criterion(
            {"logits": out[..., : K + 1], "boxes": out[..., K + 1 :].sigmoid()}, targets
        )
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.7 * history[0]


def test_mismatched_logits_or_matcher_are_rejected():
    with pytest.raises(ValueError, match="focal"):
        SetCriterion(K, HungarianMatcher(focal=False), focal=True)
    with pytest.raises(ValueError, match="unknown loss weights"):
        SetCriterion(K, HungarianMatcher(), weights={"l1": 1.0})
    gen = torch.Generator().manual_seed(9)
    outputs = {"logits": torch.randn(3, Q, K, generator=gen), "boxes": random_boxes((3, Q), gen)}
    with pytest.raises(ValueError, match=r"expected 5"):
        softmax_criterion()(outputs, random_targets(gen))
