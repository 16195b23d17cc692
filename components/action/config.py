"""The action pipeline's configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.config import require, runtime_field
from components.device import Device

Attention = Literal["softmax", "linear"]  # components.nn.attention's kinds (not imported:
# the data stages read this module and need no torch.nn)


def _int_at_least(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass
class StreamsConfig:
    """size:            frame side in pixels (the shapes images' 32: the vision encoder's)
    frames:          frames per stream
    train_streams:   streams per split; split s, stream i is drawn from numpy's Generator
    val_streams:       seeded [seed, s, i] alone, so the splits never share a stream
    test_streams:
    min_length:      an action instance's length in frames, uniform in [min, max]
    max_length:
    min_gap:         background frames between instances, uniform in [min, max]
    max_gap:
    onset:           an action's first `onset` frames change almost nothing (an ease-in): it
                     looks like background until it is under way
    distractors:     other objects on the canvas, drifting slowly (never an action)
    noise:           camera noise: the standard deviation of per-pixel Gaussian noise (0..255)
    occlusion:       the chance per frame that a dark bar starts crossing the canvas
    seed:            the streams' seed
    """

    size: int = 32
    frames: int = 2000
    train_streams: int = 6
    val_streams: int = 2
    test_streams: int = 2
    min_length: int = 12
    max_length: int = 40
    min_gap: int = 4
    max_gap: int = 30
    onset: int = 4
    distractors: int = 1
    noise: float = 4.0
    occlusion: float = 0.005
    seed: int = 0

    def __post_init__(self) -> None:
        require(_int_at_least(self.size, 16), "size", self.size, "an int >= 16")
        for key in ("train_streams", "val_streams", "test_streams"):
            require(_int_at_least(getattr(self, key), 1), key, getattr(self, key), "an int >= 1")
        require(_int_at_least(self.min_length, 2), "min_length", self.min_length, "an int >= 2")
        ok = _int_at_least(self.max_length, self.min_length)
        require(ok, "max_length", self.max_length, f"an int >= min_length = {self.min_length}")
        require(_int_at_least(self.min_gap, 0), "min_gap", self.min_gap, "an int >= 0")
        ok = _int_at_least(self.max_gap, self.min_gap)
        require(ok, "max_gap", self.max_gap, f"an int >= min_gap = {self.min_gap}")
        ok = _int_at_least(self.onset, 0) and self.onset < self.min_length
        require(ok, "onset", self.onset, f"an int in [0, min_length = {self.min_length})")
        enough = _int_at_least(self.frames, 4 * self.max_length)
        require(enough, "frames", self.frames, f"an int >= 4 × max_length = {4 * self.max_length}")
        require(_int_at_least(self.distractors, 0), "distractors", self.distractors, "an int >= 0")
        require(0 <= self.noise <= 64, "noise", self.noise, "0 <= x <= 64")
        require(0 <= self.occlusion < 1, "occlusion", self.occlusion, "0 <= x < 1")
        require(0 <= self.seed < 2**63, "seed", self.seed, "0 <= x < 2**63")


@dataclass
class ActionFeaturesConfig:
    """pool:    the latents are average-pooled to pool × pool per channel (1: their means)
    motion:  lags k: concatenate each frame's difference from the frame k before (a motion
             stream at several time scales); [] for appearance alone
    """

    pool: int = 4
    motion: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    batch_size: int = runtime_field(256)
    device: Device = runtime_field("auto")
    progress: bool = runtime_field(True)  # a bar over the streams

    def __post_init__(self) -> None:
        require(_int_at_least(self.pool, 1), "pool", self.pool, "an int >= 1")
        ok = isinstance(self.motion, list) and all(_int_at_least(k, 1) for k in self.motion)
        ok = ok and len(set(self.motion)) == len(self.motion)
        require(ok, "motion", self.motion, "a list of distinct ints >= 1 (frame lags)")
        require(_int_at_least(self.batch_size, 1), "batch_size", self.batch_size, "an int >= 1")


@dataclass
class RecurrentConfig:
    """An RNN / GRU / LSTM over the feature stream (torch's cells), trained on windows by
    truncated BPTT and run online with its hidden state carried frame to frame."""

    cell: str = "gru"  # rnn | gru | lstm
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.0  # between layers (layers >= 2)

    def __post_init__(self) -> None:
        ok = self.cell in ("rnn", "gru", "lstm")
        require(ok, "cell", self.cell, "one of rnn|gru|lstm")
        require(_int_at_least(self.hidden, 1), "hidden", self.hidden, "an int >= 1")
        require(_int_at_least(self.layers, 1), "layers", self.layers, "an int >= 1")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "0 <= x < 1")


@dataclass
class OadTRConfig:
    """OadTR (Wang et al. 2021): an encoder over [task token; the `window` latest features +
    positions], a decoder of `future` learned queries over its memory predicting the next
    frames' classes; the current frame's classifier reads the task token's output and the
    pooled decoder output. loss = CE(current) + future_weight · CE(future frames).

    causal: true is the streaming form (`causal_oadtr`): every frame a token of one causal
    linear-attention encoder over the stream, run online as a recurrence in O(1) per frame;
    `window` is then the training context, and the online state spans the whole stream."""

    window: int = 64  # T: frames of history the encoder sees (the current one included)
    future: int = 8  # ℓ: future frames the decoder predicts (0: no decoder)
    dim: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 1
    attention: Attention = "softmax"  # the shared attention module's kinds
    dropout: float = 0.1
    future_weight: float = 0.5  # λ
    gradient_checkpointing: bool = False
    causal: bool = False

    def __post_init__(self) -> None:
        require(_int_at_least(self.window, 1), "window", self.window, "an int >= 1 (T)")
        require(_int_at_least(self.future, 0), "future", self.future, "an int >= 0 (ℓ)")
        require(self.dim % 2 == 0 and self.dim >= 2, "dim", self.dim, "an even int >= 2")
        require(self.dim % self.heads == 0, "heads", self.heads, f"a divisor of dim {self.dim}")
        for key in ("encoder_layers", "decoder_layers"):
            require(_int_at_least(getattr(self, key), 1), key, getattr(self, key), "an int >= 1")
        ok = self.attention in ("softmax", "linear")
        require(ok, "attention", self.attention, "one of softmax|linear")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "0 <= x < 1")
        require(isinstance(self.causal, bool), "causal", self.causal, "true or false")
        ok = not self.causal or self.attention == "linear"
        require(ok, "attention", self.attention, "linear with causal: true (its recurrence)")
        require(self.future_weight >= 0, "future_weight", self.future_weight, "a float >= 0")


@dataclass
class EvaluateActionConfig:
    """split:          the streams scored ("test": never trained or validated on)
    onset_frames:   onset mAP scores each instance's first this many frames
    timeline:       frames of the split's first stream drawn in timeline.png
    latency_frames: frames fed one at a time to measure the streaming latency
    """

    split: str = "test"
    onset_frames: int = 4
    timeline: int = 600
    latency_frames: int = 300
    threads: int = runtime_field(1)  # CPU threads (latency is a CPU figure, one core)

    def __post_init__(self) -> None:
        ok = self.split in ("train", "val", "test")
        require(ok, "split", self.split, "one of train|val|test")
        for key in ("onset_frames", "timeline", "latency_frames", "threads"):
            require(_int_at_least(getattr(self, key), 1), key, getattr(self, key), "an int >= 1")
