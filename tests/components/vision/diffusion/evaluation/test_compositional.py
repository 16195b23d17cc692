import numpy as np
import pytest
import torch

from components.vision.data.config import ShapesConfig
from components.vision.data.shapes import COLOUR_RGB, render
from components.vision.diffusion.evaluation.compositional import (
    Found,
    box_colour,
    distinct,
    held_out_prompts,
    judge,
    judge_class,
    parse_binding,
    rates,
)


def _truth(drawn):
    """The generator's own objects as detections: class, colour read from the pixels, box."""
    found = []
    for o in drawn.objects:
        x, y, w, h = o.bbox
        box = (float(x), float(y), float(x + w), float(y + h))
        found.append(Found(o.shape, box_colour(drawn.image, box), box))
    return found


def test_the_truth_passes_every_caption_the_generator_wrote():
    config = ShapesConfig(seed=5, max_objects=2, max_overlap=0.0)
    verdicts = []
    for i in range(150):
        drawn = render(config, i, 32)
        verdicts.append(judge(drawn.caption, _truth(drawn)))
    assert rates(verdicts) == {"accuracy": 1.0, "counting": 1.0, "objects": 1.0, "position": 1.0}


def test_colours_are_read_from_the_bright_pixels_in_the_box():
    image = np.full((10, 10, 3), 20, np.uint8)
    image[2:6, 2:6] = COLOUR_RGB["orange"]
    image[3, 3] = (250, 200, 40)  # a stray pixel moves the mean, not the nearest colour
    assert box_colour(image, (1, 1, 7, 7)) == "orange"
    assert box_colour(image, (7, 7, 10, 10)) is None  # only background


def test_each_criterion_fails_on_its_own():
    circle = Found("circle", "yellow", (2.0, 10.0, 10.0, 18.0))
    square = Found("square", "green", (20.0, 10.0, 28.0, 18.0))
    prompt = "a medium yellow circle left of a medium green square"
    assert judge(prompt, [circle, square]).correct
    assert judge(prompt, [square, circle]).correct  # detection order does not matter
    swapped = judge("a medium yellow circle right of a medium green square", [circle, square])
    assert (swapped.counting, swapped.objects, swapped.position) == (True, True, False)
    wrong_colour = judge(prompt, [circle, Found("square", "blue", square.box)])
    assert (wrong_colour.objects, wrong_colour.position) == (False, False)
    extra = judge(prompt, [circle, square, Found("star", "red", (12.0, 0.0, 16.0, 4.0))])
    assert (extra.counting, extra.objects, extra.correct) == (False, True, False)
    assert judge("a small yellow circle", [circle]).correct
    assert not judge("a small yellow circle", []).objects
    # two detections of one named object do not stand for two objects
    assert not judge("a small yellow circle left of a small yellow circle", [circle]).objects


def test_held_out_prompts_are_the_bindings_alone_and_in_pairs():
    singles, pairs = held_out_prompts(["yellow circle", "green square", "red star"], "medium")
    assert singles == ["a medium yellow circle", "a medium green square", "a medium red star"]
    assert len(pairs) == 3 * 2 * 4 and len(set(pairs)) == len(pairs)
    assert "a medium red star above a medium yellow circle" in pairs
    assert parse_binding(" Yellow  circle") == ("yellow", "circle")
    with pytest.raises(ValueError, match="'handwritten seven': compositional prompts need"):
        held_out_prompts(["handwritten seven", "red star"], "small")
    with pytest.raises(ValueError, match="at least 2 distinct"):
        held_out_prompts(["red star", "red  star"], "small")


def test_a_class_prompt_wants_exactly_one_detection_of_its_class():
    seven = Found("seven", None, (4.0, 4.0, 20.0, 28.0))
    one = Found("one", None, (20.0, 4.0, 28.0, 28.0))
    assert judge_class("seven", [seven]).correct
    assert not judge_class("seven", [one]).correct
    assert not judge_class("seven", [seven, one]).correct  # a second object
    assert rates([judge_class("seven", [seven]), judge_class("seven", [])])["accuracy"] == 0.5


def test_duplicates_are_one_object():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 4.0]])
    assert distinct(boxes) == [0, 2, 3]  # box 1 repeats box 0 (IoU 0.81); box 3 overlaps 0.4
    assert distinct(boxes, iou=0.9) == [0, 1, 2, 3]
    assert distinct(torch.zeros(0, 4)) == []
