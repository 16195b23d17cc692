import math

import pytest
import torch

from components.train import TrainConfig, lr_at
from components.train.schedule import LrSchedule


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
        (
            "cosine",
            [
                0.5,
                1.0,
                1.0,
                0.5 + 0.5 * math.cos(math.pi / 4),
                0.5,
                0.5 - 0.5 * math.cos(math.pi / 4),
            ],
        ),
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_docstring_example(schedule, expected):
    cfg = TrainConfig(steps=6, lr=1.0, warmup_steps=2, schedule=schedule)
    assert [lr_at(s, cfg) for s in range(6)] == pytest.approx(expected)


def test_decay_ends_at_min_lr():
    cfg = TrainConfig(steps=100, lr=3e-4, min_lr=3e-5, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(3e-5)
    assert lr_at(9, cfg) == pytest.approx(3e-4)
    assert lr_at(55, cfg) == pytest.approx(3e-5 + 0.5 * 2.7e-4)  # halfway through decay
    assert lr_at(100, cfg) == pytest.approx(3e-5)
    assert lr_at(500, cfg) == pytest.approx(3e-5)  # past the end: stays at min_lr


def test_no_warmup_starts_at_lr():
    assert lr_at(0, TrainConfig(steps=10, lr=0.1, warmup_steps=0)) == pytest.approx(0.1)


def test_schedule_sets_optimizer_and_round_trips():
    cfg = TrainConfig(steps=6, lr=1.0, warmup_steps=2, schedule="linear")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    schedule = LrSchedule(opt, cfg)
    seen = []
    for _ in range(4):
        seen.append(schedule.apply())
        schedule.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 0.75])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.75)
    other = LrSchedule(opt, cfg)
    other.load_state_dict(schedule.state_dict())
    assert other.apply() == pytest.approx(0.5)
