"""Boxes drawn where they are, in their class's colour; truth white; low scores left out."""

import numpy as np
import pytest
import torch

from components.detection.evaluation.draw import PALETTE, TRUTH, draw_boxes
from components.detection.postprocess import Detections


def _found(*rows):
    scores, labels, boxes = zip(*rows, strict=True)
    return Detections(torch.tensor(scores), torch.tensor(labels), torch.tensor(boxes).float())


def test_prediction_outlined_in_its_class_colour_and_truth_in_white():
    image = np.zeros((32, 32, 3), np.uint8)
    found = _found((0.9, 1, (4.0, 16.0, 20.0, 30.0)), (0.2, 0, (0.0, 0.0, 31.0, 31.0)))
    truth = np.array([[22.0, 2.0, 8.0, 6.0]])  # xywh
    drawn = draw_boxes(image, found, ["a", "b"], threshold=0.5, truth=truth, scale=2)
    assert drawn.shape == (64, 64, 3) and drawn.dtype == np.uint8
    assert tuple(drawn[40, 8]) == PALETTE[1]  # left edge of the 0.9 box, x = 4·2
    assert tuple(drawn[40, 39]) == PALETTE[1]  # right edge: x1·2 - 1
    assert tuple(drawn[8, 44]) == TRUTH  # the true box's left edge: x = 22·2, y in 4..15
    assert PALETTE[0] not in {tuple(p) for p in drawn.reshape(-1, 3)}  # 0.2 < threshold
    assert tuple(drawn[40, 20]) == (0, 0, 0)  # inside the box: the image, unfilled


def test_the_image_is_not_changed_and_bad_input_is_refused():
    image = np.full((16, 16, 3), 7, np.uint8)
    draw_boxes(image, _found((1.0, 0, (1.0, 1.0, 9.0, 9.0))), ["a"])
    assert (image == 7).all()
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(image.astype(np.float32), _found((1.0, 0, (1.0, 1.0, 9.0, 9.0))), ["a"])
