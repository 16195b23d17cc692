"""DETR's forward pass, its DAB anchor refinement, postprocessing and COCO evaluation."""

import pytest
import torch

from components.config import build
from components.detection.config import DetectorConfig, DetrConfig
from components.detection.data import synthetic
from components.detection.data.config import DetectionDataConfig
from components.detection.data.dataset import DetectionDataset, DetectionRecord, collate
from components.detection.evaluate import coco_metrics, ground_truth, results_json
from components.detection.model import Detr, box_sine_embedding, inverse_sigmoid
from components.detection.postprocess import Detections, postprocess
from components.detection.task import DetrTask

SMALL = {"backbone": {"channels": [8, 16, 32], "norm_groups": 4}, "dim": 32, "heads": 2,
         "encoder_layers": 1, "decoder_layers": 3, "num_queries": 6}  # fmt: skip


def _batch(n=2, size=32):
    images = torch.randn(n, 3, size, size)
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[1, :, 24:] = True  # the second image is padded on the right
    return images, mask


@pytest.mark.parametrize("anchors", [False, True])
def test_outputs_per_layer(anchors):
    torch.manual_seed(0)
    model = Detr(build(DetrConfig, {**SMALL, "anchors": anchors}), num_classes=5)
    out = model(*_batch())
    assert out["logits"].shape == (2, 6, 6) and out["boxes"].shape == (2, 6, 4)
    assert len(out["aux"]) == 2 and out["aux"][0]["boxes"].shape == (2, 6, 4)
    assert ((out["boxes"] > 0) & (out["boxes"] < 1)).all() and "dn" not in out


def test_anchor_queries_start_at_their_anchors_and_are_refined():
    torch.manual_seed(0)
    model = Detr(build(DetrConfig, {**SMALL, "anchors": True}), num_classes=5)
    out = model(*_batch())
    first = out["aux"][0]["boxes"]  # the box head's last layer starts at zero
    assert torch.allclose(first, model.anchors.sigmoid().expand_as(first), atol=1e-6)
    embedding = box_sine_embedding(torch.rand(3, 4), 32)
    assert embedding.shape == (3, 32) and embedding.abs().max() <= 1
    x = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(inverse_sigmoid(x).sigmoid(), x)


def test_focal_head_has_no_no_object_class():
    model = Detr(build(DetrConfig, {**SMALL, "loss": {"class_loss": "focal"}}), num_classes=5)
    assert model(*_batch())["logits"].shape == (2, 6, 5)


def test_postprocess_keeps_the_top_k_in_pixels():
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 1], logits[0, 1, 0], logits[0, 2, 2] = 5.0, 3.0, 9.0  # query 2: no object
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1, 1]]])
    (found,) = postprocess(logits, boxes, torch.tensor([[100, 200]]), top_k=2)
    assert found.labels.tolist() == [1, 0] and found.scores[0] > found.scores[1]
    assert torch.allclose(found.boxes[0], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    (focal,) = postprocess(logits, boxes, torch.tensor([[100, 200]]), top_k=1, focal=True)
    assert focal.labels.tolist() == [2]


def _shapes(count=12):
    config = build(DetectionDataConfig, {"source": "shapes", "size": 48, "count": count})
    records = [DetectionRecord.from_image(i, synthetic.render(config, i)) for i in range(count)]
    return records, synthetic.class_names(config)


def _as_detections(record: DetectionRecord, shift: float = 0.0) -> Detections:
    boxes = torch.as_tensor(record.boxes).clone()
    boxes[:, 0] += shift * boxes[:, 2]
    xyxy = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
    return Detections(torch.ones(len(boxes)), torch.as_tensor(record.labels), xyxy)


def test_coco_eval_of_the_ground_truth_is_one_and_shifted_boxes_lower():
    records, classes = _shapes()
    ids = [r.image_id for r in records]
    truth = ground_truth(records, classes)
    perfect, _ = coco_metrics(truth, results_json(ids, [_as_detections(r) for r in records]))
    assert perfect["ap"] == pytest.approx(1.0) and perfect["ap50"] == pytest.approx(1.0)
    shifted = [_as_detections(r, shift=0.4) for r in records]
    worse, _ = coco_metrics(truth, results_json(ids, shifted))
    assert worse["ap"] < 0.5
    nothing, _ = coco_metrics(truth, [])
    assert nothing["ap"] <= 0


def test_task_loss_is_finite_and_has_every_term():
    records, classes = _shapes(4)
    config = build(DetectorConfig, {"model": {**SMALL, "anchors": True}})
    task = DetrTask(config, len(classes), records)
    model = task.model()
    groups = task.param_groups(model)
    assert [g.name for g in groups] == ["backbone", "transformer"]
    batch = collate([DetectionDataset(records)[i] for i in range(4)])
    loss, metrics = task.loss(model, batch)
    assert torch.isfinite(loss) and {"loss_ce", "loss_bbox", "loss_giou"} <= set(metrics)
    loss.backward()
    assert model.anchors.grad is not None


def test_denoising_queries_add_their_loss_terms_in_training_only():
    records, classes = _shapes(4)
    model_config = {**SMALL, "anchors": True, "denoising": {"enabled": True, "groups": 2}}
    task = DetrTask(build(DetectorConfig, {"model": model_config}), len(classes), records)
    model = task.model()
    batch = collate([DetectionDataset(records)[i] for i in range(4)])
    loss, metrics = task.loss(model, batch)
    assert {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn"} <= set(metrics) and torch.isfinite(loss)
    model.eval()
    _, metrics = task.loss(model, batch)
    assert "loss_ce_dn" not in metrics


def test_denoising_needs_anchor_queries():
    with pytest.raises(Exception, match="denoising.enabled"):
        build(DetrConfig, {"denoising": {"enabled": True}})


def test_overfits_four_images_to_ap50_one():
    """The whole chain — data, model, matcher, criterion, engine, postprocess, COCOeval —
    learns: 4 shapes images, DAB anchors, 200 steps (pinned), AP50 >= 0.95 on them."""
    from components.train.engine import train

    config = build(DetectionDataConfig, {"source": "shapes", "size": 48, "count": 4,
                                         "max_objects": 3, "shape_scale": 0.8})  # fmt: skip
    records = [DetectionRecord.from_image(i, synthetic.render(config, i)) for i in range(4)]
    classes = synthetic.class_names(config)
    detector = build(DetectorConfig, {
        "model": {"anchors": True, "num_queries": 8, "dim": 64, "heads": 4,
                  "backbone": {"channels": [16, 32, 64]}},
        "augment": {"flip": 0.0}, "backbone_lr_scale": 1.0,
        "train": {"steps": 200, "batch_size": 4, "lr": 1e-3, "warmup_steps": 10,
                  "schedule": "constant", "clip_grad_norm": 1.0, "progress": False},
    })  # fmt: skip
    task = DetrTask(detector, len(classes), records)
    model = train(task, detector.train).model.eval()
    batch = collate([DetectionDataset(records)[i] for i in range(4)])
    with torch.no_grad():
        out = model(batch.images, batch.mask)
    found = postprocess(out["logits"], out["boxes"], torch.tensor([[48, 48]] * 4))
    truth = ground_truth(records, classes)
    metrics, _ = coco_metrics(truth, results_json([r.image_id for r in records], found))
    assert metrics["ap50"] >= 0.95


def test_roi_features_sample_inside_the_anchor_box_of_the_unpadded_image():
    model = Detr(build(DetrConfig, {"anchors": True, "roi_points": 2, "dim": 8, "heads": 2}), 3)
    # a [1, 8, 4, 8] map whose right half (x >= 4) is padding; value = the column index
    columns = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 8, 4, 8)
    memory = columns.flatten(2).transpose(1, 2)  # [1, 32, 8]
    padding = torch.zeros(1, 4, 8, dtype=torch.bool)
    padding[..., 4:] = True
    fmap = model._feature_map(memory, padding.flatten(1), (4, 8))
    # a box over the whole unpadded image: its 2 x 2 points at x = 1/4 and 3/4 of 4 columns
    sampled = model.roi_features(fmap, torch.tensor([[[0.5, 0.5, 1.0, 1.0]]]))
    points = sampled.view(1, 1, 4, 8)[0, 0, :, 0]  # channel 0 of each point
    assert torch.allclose(points, torch.tensor([0.5, 2.5, 0.5, 2.5]))  # never the padding


def test_roi_points_need_anchors():
    with pytest.raises(ValueError, match="roi_points"):
        build(DetrConfig, {"roi_points": 4, "anchors": False})
