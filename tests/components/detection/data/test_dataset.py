import numpy as np
import pytest
import torch

from components.detection.data.augment import Compose, RandomHorizontalFlip, RandomScale
from components.detection.data.config import DetectionDataConfig
from components.detection.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionBatch,
    DetectionDataset,
    DetectionRecord,
    collate,
    records_from_table,
)
from components.detection.data.synthetic import generate, image_split, store_record
from components.stage import StageInputError
from components.vision.data.store import ImagesWriter, ImageTable, read_images


def record(image_id=4, height=80, width=100):
    image = np.zeros((height, width, 3), np.uint8)
    image[20:60, 10:40] = (255, 0, 128)
    boxes = np.array([[10, 20, 30, 40], [0, 0, width, height]], np.float32)
    return DetectionRecord(image_id, image, boxes, np.array([2, 0]))


def test_a_sample_is_a_normalised_image_and_a_detr_target():
    image, target = DetectionDataset([record()])[0]
    assert image.shape == (3, 80, 100) and image.dtype == torch.float32
    red = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert image[0, 30, 20].item() == pytest.approx(red)
    assert image[1, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[1] / IMAGENET_STD[1])
    assert target["labels"].tolist() == [2, 0] and target["labels"].dtype == torch.int64
    # [10, 20, 30, 40] xywh in 100 × 80: centre (25, 40), size (30, 40), as fractions.
    expected = [[0.25, 0.5, 0.3, 0.5], [0.5, 0.5, 1.0, 1.0]]
    assert torch.allclose(target["boxes"], torch.tensor(expected))
    assert target["boxes"].dtype == torch.float32
    assert target["image_id"].item() == 4 and target["image_id"].dtype == torch.int64
    assert target["orig_size"].tolist() == [80, 100] == target["size"].tolist()


def test_augmented_targets_are_normalised_by_the_augmented_size():
    data = DetectionDataset([record()], augment=Compose([RandomHorizontalFlip(p=1.0)]))
    image, target = data[0]
    assert torch.allclose(target["boxes"][0], torch.tensor([0.75, 0.5, 0.3, 0.5]))
    assert image[0, 30, 100 - 1 - 20].item() == pytest.approx((1 - 0.485) / 0.229)
    scaled = DetectionDataset([record()], augment=RandomScale(0.5, 0.5))
    image, target = scaled[0]
    assert image.shape == (3, 40, 50) and target["size"].tolist() == [40, 50]
    assert target["orig_size"].tolist() == [80, 100]
    assert torch.allclose(target["boxes"][0], torch.tensor([0.25, 0.5, 0.3, 0.5]))


def test_augmentation_follows_torch_global_seed():
    data = DetectionDataset([record()], augment=RandomScale(0.5, 1.5))
    torch.manual_seed(0)
    first = [data[0][0].shape for _ in range(6)]
    torch.manual_seed(0)
    assert [data[0][0].shape for _ in range(6)] == first
    assert len(set(first)) > 1


def test_images_without_objects_have_empty_targets():
    empty = DetectionRecord(
        0, np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    )
    _, target = DetectionDataset([empty], augment=RandomHorizontalFlip(1.0))[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_collate_pads_bottom_right_and_masks_the_padding():
    data = DetectionDataset([record(1, 80, 100), record(2, 64, 120)])
    batch = collate([data[0], data[1]])
    assert isinstance(batch, DetectionBatch)
    assert batch.images.shape == (2, 3, 80, 120) and batch.mask.shape == (2, 80, 120)
    for i, (height, width) in enumerate([(80, 100), (64, 120)]):
        expected = torch.ones(80, 120, dtype=torch.bool)
        expected[:height, :width] = False
        assert torch.equal(batch.mask[i], expected)
        assert torch.equal(batch.images[i, :, :height, :width], data[i][0])
        assert (batch.images[i][:, expected] == 0).all()
    assert [t["image_id"].item() for t in batch.targets] == [1, 2]
    assert batch.mask.sum().item() == 80 * 20 + 16 * 120


def test_records_round_trip_through_the_image_store(tmp_path):
    config = DetectionDataConfig(source="shapes", size=64, count=16, val_fraction=0.3)
    written = {}
    with ImagesWriter(tmp_path, size=64, channels=3, val_fraction=0.3, split_seed=0) as writer:
        for index, split, image in generate(config):
            assert writer.add(store_record(config, index, image)) == split
            written[index] = DetectionRecord.from_image(index, image)
        writer.finish(source="shapes-det", classes=("a",))
    for split in ("train", "val"):
        records = records_from_table(read_images(tmp_path / f"{split}.parquet"))
        assert records and all(image_split(config, r.image_id) == split for r in records)
        for r in records:
            original = written[r.image_id]
            assert np.array_equal(r.image, original.image)
            assert np.array_equal(r.boxes, original.boxes)
            assert np.array_equal(r.labels, original.labels)


def test_records_from_a_table_with_mismatched_objects_name_the_image():
    table = ImageTable(
        np.zeros((1, 8, 8, 3), np.uint8),
        np.array([9]),
        [""],
        [[1, 2]],
        [[{"bbox": [0, 0, 1, 1]}]],
        ["k"],
    )
    with pytest.raises(StageInputError, match="shapes/val: image id 9"):
        records_from_table(table, "shapes/val")
