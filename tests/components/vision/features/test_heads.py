import pytest
import torch

from components.vision.data.shapes import COLOURS, SHAPES, SIZES
from components.vision.features.heads import (
    Head,
    agreement,
    decode,
    expected,
    heads_for,
    targets,
)

DIGITS = heads_for("digits", ["zero", "one", "two"], 0)
SHAPE_HEADS = heads_for("shapes", [], 2)


def test_heads_follow_the_data():
    assert [h.name for h in DIGITS] == ["class"] and not DIGITS[0].multi_label
    assert [(h.name, h.multi_label) for h in SHAPE_HEADS] == [
        ("shape", True), ("colour", True), ("size", True), ("count", False),
    ]  # fmt: skip
    assert SHAPE_HEADS[0].names == SHAPES and SHAPE_HEADS[3].names == ("1", "2")
    assert Head.from_json(SHAPE_HEADS[1].to_json()) == SHAPE_HEADS[1]
    with pytest.raises(ValueError, match="without classes"):
        heads_for("folder", [], 0)


def test_expected_attributes_come_from_labels_or_captions():
    assert expected(DIGITS, "a handwritten two", [2]) == {"class": frozenset({"two"})}
    assert expected(DIGITS, "a handwritten one") == {"class": frozenset({"one"})}
    got = expected(SHAPE_HEADS, "a small red circle left of a large red square")
    assert got == {
        "shape": frozenset({"circle", "square"}),
        "colour": frozenset({"red"}),
        "size": frozenset({"small", "large"}),
        "count": frozenset({"2"}),
    }
    with pytest.raises(ValueError, match="names 0 of the classes"):
        expected(DIGITS, "a cat")
    with pytest.raises(ValueError, match="is not 'a <size> <colour> <shape>'"):
        expected(SHAPE_HEADS, "a purple blob")


def test_targets_and_decode_invert_each_other():
    wanted = [
        expected(SHAPE_HEADS, "a small red circle left of a large blue square"),
        expected(SHAPE_HEADS, "a medium white star"),
    ]
    made = targets(SHAPE_HEADS, wanted)
    assert made["shape"].shape == (2, len(SHAPES)) and made["colour"].shape == (2, len(COLOURS))
    assert made["size"].sum(1).tolist() == [2.0, 1.0] and made["count"].tolist() == [1, 0]
    logits = {h.name: (made[h.name] * 20 - 10) for h in SHAPE_HEADS if h.multi_label}
    logits["count"] = torch.nn.functional.one_hot(made["count"], 2).float()
    assert decode(SHAPE_HEADS, logits) == wanted
    assert len(SIZES) == made["size"].shape[1]
    with pytest.raises(ValueError, match=r"head 'count' has no output \['3'\]"):
        targets(
            SHAPE_HEADS,
            [expected(SHAPE_HEADS, "a small red circle, a small red star and a small red cross")],
        )


def test_agreement_scores_each_head_and_all_of_them():
    a = expected(SHAPE_HEADS, "a small red circle")
    b = expected(SHAPE_HEADS, "a small blue circle")
    c = expected(SHAPE_HEADS, "a large blue circle")
    scores = agreement([a, b, b, c], [a, a, b, b])
    assert scores["shape"] == 1.0 and scores["colour"] == 0.75 and scores["size"] == 0.75
    assert scores["all"] == 0.5
