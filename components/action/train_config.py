"""The train_action stage's section (apart from config.py: the data stages need no engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.action.config import OadTRConfig, RecurrentConfig
from components.config import require
from components.train.config import TrainConfig

ModelKind = Literal["recurrent", "oadtr"]


@dataclass
class TrainActionConfig:
    """model:      "recurrent" (the `recurrent` section: rnn | gru | lstm) or "oadtr"
    chunk:      recurrent: frames per training window (truncated BPTT: the state starts at
                zero in each, the gradient stops at its start)
    burn_in:    recurrent and causal OadTR: the first frames of a window are not in the loss
                (the state warms up, as it is warm online)
    """

    model: ModelKind = "oadtr"
    recurrent: RecurrentConfig = field(default_factory=RecurrentConfig)
    oadtr: OadTRConfig = field(default_factory=OadTRConfig)
    chunk: int = 64
    burn_in: int = 16
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        ok = self.model in ("recurrent", "oadtr")
        require(ok, "model", self.model, "one of recurrent|oadtr")
        require(self.chunk >= 2, "chunk", self.chunk, "an int >= 2")
        ok = 0 <= self.burn_in < self.chunk
        require(ok, "burn_in", self.burn_in, f"an int in [0, chunk = {self.chunk})")
        if self.model == "oadtr" and self.oadtr.causal:
            window = self.oadtr.window
            ok = self.burn_in < window
            require(ok, "burn_in", self.burn_in, f"an int in [0, oadtr.window = {window})")
