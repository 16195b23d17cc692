"""Detector.detect_fitted: images brought to the scale (and canvas) the detector learnt, and
its boxes brought back to the image's pixels."""

import numpy as np
import torch

from components.detection.postprocess import Detections
from components.detection.saved import Detector


class Recording(Detector):
    """A Detector whose network is replaced by a box around where the image was placed."""

    def __init__(self, image_size: int, placed_box: list[float]):  # no network: not needed
        self.image_size, self.placed_box, self.seen = image_size, placed_box, []

    def detect(self, images):
        self.seen = list(images)
        box = torch.tensor([self.placed_box])
        return [Detections(torch.ones(1), torch.zeros(1, dtype=torch.int64), box) for _ in images]


def _image():
    image = np.full((16, 16, 3), 20, np.uint8)  # a dark background...
    image[4:12, 4:12] = 200  # ...with a bright square
    return image


def test_fitted_images_are_scaled_to_the_training_size_and_boxes_scaled_back():
    detector = Recording(64, [16.0, 16.0, 48.0, 48.0])  # the square, 4x enlarged
    (found,) = detector.detect_fitted([_image()])
    assert detector.seen[0].shape == (64, 64, 3)
    assert found.boxes.tolist() == [[4.0, 4.0, 12.0, 12.0]]


def test_a_canvas_holds_the_scaled_image_in_its_middle_on_the_background_colour():
    detector = Recording(64, [24.0, 24.0, 40.0, 40.0])  # the square, 2x, on the canvas
    (found,) = detector.detect_fitted([_image()], scale=2.0, canvas=True)
    (canvas,) = detector.seen
    assert canvas.shape == (64, 64, 3)
    assert (canvas[:16] == 20).all() and (canvas[:, :16] == 20).all()  # the median border
    assert (canvas[26:38, 26:38] == 200).all()  # the square, 32 px image placed at 16..48
    assert found.boxes.tolist() == [[4.0, 4.0, 12.0, 12.0]]
