import pytest

from components.config import ConfigError, build
from components.train import TrainConfig


def test_build_from_params_section():
    cfg = build(TrainConfig, {"steps": 5, "betas": [0.9, 0.95], "ema_decay": 0.99}, "train")
    assert (cfg.steps, cfg.betas, cfg.ema_decay) == (5, (0.9, 0.95), 0.99)
    assert cfg.device == "auto" and cfg.precision == "auto"


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"steps": 0}, "train.steps", ">= 1"),
        ({"batch_size": 10, "grad_accum": 4}, "train.batch_size", "multiple of grad_accum = 4"),
        ({"lr": 0.0}, "train.lr", "> 0"),
        ({"min_lr": 1.0}, "train.min_lr", "in [0, lr"),
        ({"ema_decay": 1.0}, "train.ema_decay", "[0, 1)"),
        ({"clip_grad_norm": 0.0}, "train.clip_grad_norm", "> 0"),
        ({"checkpoint_every": 0}, "train.checkpoint_every", "None or an int >= 1"),
        ({"betas": [0.9, 1.0]}, "train.betas", "[0, 1)"),
        ({"device": "tpu"}, "train.device", "one of"),
        ({"precision": "fp16"}, "train.precision", "one of"),
        ({"seed": -1}, "train.seed", ">= 0"),
    ],
)
def test_bad_values_name_key_and_expectation(data, key, expected):
    with pytest.raises(ConfigError, match="expected") as err:
        build(TrainConfig, data, "train")
    assert err.value.key == key
    assert expected in err.value.expected


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError) as err:
        TrainConfig(device="gpu")
    assert (err.value.key, err.value.value) == ("device", "gpu")
