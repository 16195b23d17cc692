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
        ({"warmup_steps": -1}, "train.warmup_steps", "an int >= 0"),
        ({"val_every": 0}, "train.val_every", "None or an int >= 1"),
        ({"compile": "yes"}, "train.compile", "one of ['auto', 'always', 'never']"),
        ({"channels_last": True}, "train.channels_last", "one of ['auto', 'always', 'never']"),
        ({"shuffle": "no"}, "train.shuffle", "bool"),
    ],
)
def test_bad_values_name_key_and_expectation(data, key, expected):
    with pytest.raises(ConfigError, match="expected") as err:
        build(TrainConfig, data, "train")
    assert err.value.key == key
    assert expected in err.value.expected


@pytest.mark.parametrize(
    ("kwargs", "key", "expected"),
    [
        ({"device": "gpu"}, "device", "one of auto|cpu|cuda|mps"),
        ({"compile": "yes"}, "compile", "one of auto|always|never"),
        ({"channels_last": None}, "channels_last", "one of auto|always|never"),
        ({"steps": "5"}, "steps", "an int >= 1"),  # types too, not only ranges
        ({"steps": True}, "steps", "an int >= 1"),
        ({"val_every": 2.5}, "val_every", "None or an int >= 1"),
        ({"lr": "3e-4"}, "lr", "a float > 0"),
        ({"betas": 0.9}, "betas", "two floats in [0, 1)"),
        ({"progress": 1}, "progress", "true or false"),
        ({"schedule": "step"}, "schedule", "one of cosine|linear|constant"),
    ],
)
def test_direct_construction_is_checked_too(kwargs, key, expected):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**kwargs)
    assert (err.value.key, err.value.value, err.value.expected) == (key, *kwargs.values(), expected)


def test_runtime_knobs_default_to_auto():
    cfg = TrainConfig()
    assert (cfg.compile, cfg.channels_last) == ("auto", "auto")
