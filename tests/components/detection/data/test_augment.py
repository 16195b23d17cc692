import pytest
import torch

from components.detection.data.augment import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    crop,
    hflip,
    resize,
)

H, W = 48, 64
# Three rectangles (xyxy), rectangle k drawn in channel k only, so they may overlap.
RECTANGLES = [[4, 6, 20, 30], [30, 10, 60, 22], [12, 26, 40, 44]]


def drawn_sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image = torch.zeros((3, H, W), dtype=torch.uint8)
    for k, (x0, y0, x1, y1) in enumerate(RECTANGLES):
        image[k, y0:y1, x0:x1] = 200
    return image, torch.tensor(RECTANGLES, dtype=torch.float32), torch.arange(3)


def pixel_box(channel: torch.Tensor) -> list[int] | None:
    """xyxy of the pixels brighter than half the rectangle's value; None if none."""
    rows = torch.nonzero((channel > 100).any(dim=1)).flatten()
    cols = torch.nonzero((channel > 100).any(dim=0)).flatten()
    if not len(rows):
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def assert_boxes_on_pixels(image, boxes, labels, tolerance=0.0):
    """Each kept box sits on its rectangle's visible pixels; dropped ones left none or few."""
    for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
        seen = pixel_box(image[label])
        assert seen is not None, f"label {label}: box {box} kept, no pixels"
        assert max(abs(a - b) for a, b in zip(box, seen, strict=True)) <= tolerance, (box, seen)
    height, width = image.shape[-2:]
    assert ((boxes[:, 0::2] >= 0) & (boxes[:, 0::2] <= width)).all()
    assert ((boxes[:, 1::2] >= 0) & (boxes[:, 1::2] <= height)).all()


def test_flip_twice_is_the_identity():
    image = torch.randint(0, 256, (3, 7, 9), dtype=torch.uint8)
    boxes = torch.tensor([[0.5, 1.0, 3.25, 6.0], [2.0, 0.0, 9.0, 7.0]])
    labels = torch.tensor([3, 1])
    twice = hflip(*hflip(image, boxes, labels))
    assert torch.equal(twice[0], image) and torch.equal(twice[1], boxes)
    assert torch.equal(twice[2], labels)


def test_a_flipped_box_covers_the_flipped_pixels():
    image, boxes, labels = hflip(*drawn_sample())
    assert boxes[0].tolist() == [W - 20, 6, W - 4, 30]  # x range [4, 20) -> [44, 60)
    assert_boxes_on_pixels(image, boxes, labels)


@pytest.mark.parametrize("height, width", [(96, 128), (24, 32), (60, 40)])
def test_resize_scales_boxes_with_the_image(height, width):
    image, boxes, labels = drawn_sample()
    resized, scaled, same = resize(image, boxes, labels, height, width)
    assert resized.shape == (3, height, width) and resized.dtype == torch.uint8
    expected = boxes * torch.tensor([width / W, height / H, width / W, height / H])
    assert torch.allclose(scaled, expected) and torch.equal(same, labels)
    assert_boxes_on_pixels(resized, scaled, same, tolerance=1.0)


def test_scale_jitter_draws_one_factor_for_both_sides():
    image, boxes, labels = drawn_sample()
    jitter = RandomScale(0.5, 1.5)
    for seed in range(5):
        out, scaled, _ = jitter(image, boxes, labels, torch.Generator().manual_seed(seed))
        factor_h, factor_w = out.shape[1] / H, out.shape[2] / W
        assert abs(factor_h - factor_w) < 0.05 and 0.49 < factor_w < 1.51
        assert torch.allclose(scaled[:, 0::2], boxes[:, 0::2] * factor_w)
        assert torch.allclose(scaled[:, 1::2], boxes[:, 1::2] * factor_h)


def test_crop_shifts_clips_and_drops_by_visible_fraction():
    image, boxes, labels = drawn_sample()
    # Window x [10, 50), y [8, 40). Box 0 keeps x [10, 20) of [4, 20): 10 * 22 / (16 * 24)
    # = 0.57 of its area; box 1 keeps x [30, 50), y [10, 22): 20/30; box 2 keeps y [26, 40).
    window, kept, kept_labels = crop(image, boxes, labels, 8, 10, 32, 40, min_visible=0.6)
    assert window.shape == (3, 32, 40)
    assert kept_labels.tolist() == [1, 2]
    assert kept.tolist() == [[20, 2, 40, 14], [2, 18, 30, 32]]
    assert_boxes_on_pixels(window, kept, kept_labels)
    _, all_kept, _ = crop(image, boxes, labels, 8, 10, 32, 40, min_visible=0.0)
    assert all_kept[0].tolist() == [0, 0, 10, 22]


def test_crop_drops_boxes_fully_outside_the_window():
    image, boxes, labels = drawn_sample()
    # x [0, 26), y [0, 10): only box 0 reaches into it; box 1 and 2 lie right of / below.
    _, kept, kept_labels = crop(image, boxes, labels, 0, 0, 10, 26, min_visible=0.0)
    assert kept_labels.tolist() == [0] and kept.tolist() == [[4, 6, 20, 10]]
    # A window touching a box's edge only (x1 = 20 = its x0 ...) keeps nothing of it.
    _, kept, _ = crop(image, boxes[:1], labels[:1], 0, 20, 48, 44, min_visible=0.0)
    assert len(kept) == 0


@pytest.mark.parametrize(
    "augment",
    [
        RandomHorizontalFlip(p=0.5),
        RandomScale(0.6, 1.4),
        RandomCrop(min_size=0.4, min_visible=0.3),
        Compose([RandomHorizontalFlip(), RandomScale(0.6, 1.4), RandomCrop(0.4, 0.3)]),
    ],
    ids=["flip", "scale", "crop", "compose"],
)
def test_rectangles_stay_under_their_boxes(augment):
    image, boxes, labels = drawn_sample()
    resized = isinstance(augment, (RandomScale, Compose))
    draws = set()
    for seed in range(12):
        out = augment(image, boxes, labels, torch.Generator().manual_seed(seed))
        assert_boxes_on_pixels(*out, tolerance=1.0 if resized else 0.0)
        assert len(out[2]) >= 1 and out[1].dtype == torch.float32
        draws.add((tuple(out[0].shape), tuple(out[1].flatten().tolist())))
    assert len(draws) > 1  # the draws differ between seeds
    again = augment(image, boxes, labels, torch.Generator().manual_seed(3))
    first = augment(image, boxes, labels, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(again, first, strict=True))


def test_random_crop_keeps_a_box_or_leaves_the_sample():
    image, boxes, labels = drawn_sample()
    tiny = RandomCrop(min_size=0.05, min_visible=1.0)  # whole boxes only: windows rarely fit
    for seed in range(10):
        out, kept, kept_labels = tiny(image, boxes, labels, torch.Generator().manual_seed(seed))
        assert len(kept) >= 1
        if out.shape == image.shape:
            assert torch.equal(kept, boxes)
        assert_boxes_on_pixels(out, kept, kept_labels)
