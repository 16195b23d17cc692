"""`TrainConfig`: everything the training engine reads, one `params.yaml` section.

`batch_size` is the global batch of one optimizer step: it is split into `grad_accum`
micro-batches, and each micro-batch across the `world_size` ranks, so the same config gives
the same training on 1 process or W (`batch_size % (grad_accum * W) == 0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from components.config import require, runtime_field
from components.device import Device as Device  # the device picker's; re-exported

Precision = Literal["auto", "fp32", "bf16"]
Schedule = Literal["cosine", "linear", "constant"]
Switch = Literal["auto", "always", "never"]


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps in total (a resumed run continues up to it)
    batch_size: int = 32  # global samples per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate (AdamW)
    min_lr: float = 0.0  # where cosine/linear decay ends
    weight_decay: float = 0.0  # decoupled; applied to weights with ndim >= 2 only
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # linear ramp from lr/warmup_steps up to lr
    schedule: Schedule = "cosine"
    clip_grad_norm: float | None = 1.0  # None: no clipping (the norm is still logged)
    ema_decay: float | None = None  # None: no EMA; else ema = decay * ema + (1 - decay) * w
    val_every: int | None = None  # steps between validations (and at the last step)
    val_batch_size: int | None = None  # global; None: batch_size
    log_every: int = 10  # steps between train metrics
    checkpoint_every: int | None = None  # steps between checkpoints (and at the last step)
    keep_checkpoints: int = 3  # newest checkpoints kept; older ones are deleted
    seed: int = 0
    device: Device = runtime_field("auto")  # auto: cuda > mps > cpu
    precision: Precision = "auto"  # auto: bf16 autocast on cuda, fp32 elsewhere
    shuffle: bool = True  # a fresh permutation per epoch, from (seed, epoch)
    num_workers: int = runtime_field(0)  # DataLoader worker processes
    progress: bool = runtime_field(True)  # tqdm bar on rank 0
    # Runtime knobs above and here (components.config.runtime_field): not a stage's identity.
    compile: Switch = runtime_field("auto")  # torch.compile the forward; auto: on CUDA only
    channels_last: Switch = runtime_field("auto")  # auto: on CUDA, for 4-D (conv) weights

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            _int(self, key, 1)
        for key in ("val_every", "val_batch_size", "checkpoint_every"):
            _int(self, key, 1, optional=True)
        for key in ("warmup_steps", "seed", "num_workers"):
            _int(self, key, 0)
        require(
            self.batch_size % self.grad_accum == 0,
            "batch_size",
            self.batch_size,
            f"a multiple of grad_accum = {self.grad_accum}",
        )
        require(is_number(self.lr) and self.lr > 0, "lr", self.lr, "a float > 0")
        require(
            is_number(self.min_lr) and 0 <= self.min_lr <= self.lr,
            "min_lr",
            self.min_lr,
            f"a float in [0, lr = {self.lr}]",
        )
        decay = self.weight_decay
        require(is_number(decay) and decay >= 0, "weight_decay", decay, "a float >= 0")
        require(
            isinstance(self.betas, (tuple, list))
            and len(self.betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "two floats in [0, 1)",
        )
        clip = self.clip_grad_norm
        require(
            clip is None or (is_number(clip) and clip > 0),
            "clip_grad_norm",
            clip,
            "None or a float > 0",
        )
        ema_decay = self.ema_decay
        require(
            ema_decay is None or (is_number(ema_decay) and 0 <= ema_decay < 1),
            "ema_decay",
            ema_decay,
            "None or a float in [0, 1)",
        )
        for key, choices in (
            ("schedule", Schedule),
            ("device", Device),
            ("precision", Precision),
            ("compile", Switch),
            ("channels_last", Switch),
        ):
            value = getattr(self, key)
            require(value in get_args(choices), key, value, "one of " + "|".join(get_args(choices)))
        for key in ("shuffle", "progress"):
            value = getattr(self, key)
            require(isinstance(value, bool), key, value, "true or false")


def is_number(value: object) -> bool:
    """An int or float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(config: TrainConfig, key: str, least: int, optional: bool = False) -> None:
    value = getattr(config, key)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
    expected = ("None or " if optional else "") + f"an int >= {least}"
    require(ok or (optional and value is None), key, value, expected)
