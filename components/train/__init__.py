"""The training engine shared by every torch trainer: `train(task, config, checkpoint_dir)`."""

from components.train.checkpoint import CheckpointError
from components.train.config import TrainConfig
from components.train.device import select_device
from components.train.ema import Ema
from components.train.engine import EvalFn, Task, TrainResult, train
from components.train.groups import ParamGroup
from components.train.schedule import lr_at

__all__ = [
    "CheckpointError",
    "Ema",
    "EvalFn",
    "ParamGroup",
    "Task",
    "TrainConfig",
    "TrainResult",
    "lr_at",
    "select_device",
    "train",
]
