"""The word2vec stage's config: word2vec.c's options, plus how the batched trainer runs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

from components.config import require, runtime_field


@dataclass
class Word2VecConfig:
    """word2vec.c's options, plus how the batched trainer runs.

    batch_size: centers per update (gradients of a batch are summed, so a larger batch is
        faster but adds more updates of a frequent word at once).
    update_cap: at most this many examples' worth of update per row and batch (null: no
        cap); see `sgd.row_scales`.
    workers: CPU threads (0: all cores); results do not depend on it, unless `hogwild`.
    hogwild: on CPU, run `workers` threads that each train their own chunks of the corpus at
        once, updating the shared matrices without locks, as word2vec.c and gensim do. Each
        thread's step is single-threaded, so more of the machine does useful work (and with
        `compile`, only this parallelises the compiled step), but updates race: results vary
        from run to run. Off (default): one stream of batches, each batch's gradients split
        over the threads and applied in a fixed order, so a seed gives one result.
    device: "auto" takes CUDA when present; the same code runs on both.
    cuda_graphs: on CUDA, replay each batch step from a captured CUDA graph (the same
        arithmetic, one launch instead of ~60; see `graphs`).
    compile: on CPU, run each batch step as C++ made by `torch.compile` (the same arithmetic up
        to float rounding; see `compiled`). "auto" compiles CBOW, ~2x faster that way, and
        skip-gram under `hogwild`; not skip-gram alone, whose compiled step on one core is only
        as fast as the eager one split over two.
        The first run at a new batch size, dim or window compiles for ~40 s (2-core CPU);
        later runs load the kernels from Inductor's disk cache in seconds.
    lowercase: fold word queries (and `unit: word` training text, in the stage) to lower case.
    """

    mode: Literal["skipgram", "cbow"] = "skipgram"
    unit: Literal["token", "word"] = "token"
    dim: int = 100
    window: int = 5
    negative: int = 5
    sample: float = 1e-3
    min_count: int = 5
    max_vocab: int | None = None
    epochs: int = 5
    alpha: float = 0.025
    min_alpha_ratio: float = 1e-4
    batch_size: int = 1024
    update_cap: int | None = 32
    workers: int = runtime_field(0)
    hogwild: bool = False
    seed: int = 1
    device: Literal["auto", "cpu", "cuda"] = runtime_field("auto")
    cuda_graphs: bool = runtime_field(True)
    compile: Literal["auto", "always", "never"] = runtime_field("auto")
    lowercase: bool = True
    progress: bool = runtime_field(True)

    def __post_init__(self) -> None:
        require(self.dim >= 1, "dim", self.dim, "an int >= 1")
        require(self.window >= 1, "window", self.window, "an int >= 1")
        require(self.negative >= 1, "negative", self.negative, "an int >= 1")
        require(self.sample >= 0, "sample", self.sample, "a float >= 0")
        require(self.min_count >= 1, "min_count", self.min_count, "an int >= 1")
        if self.max_vocab is not None:
            require(self.max_vocab >= 1, "max_vocab", self.max_vocab, "an int >= 1 or null")
        require(self.epochs >= 1, "epochs", self.epochs, "an int >= 1")
        require(self.alpha > 0, "alpha", self.alpha, "a float > 0")
        require(0 < self.min_alpha_ratio <= 1, "min_alpha_ratio", self.min_alpha_ratio, "in (0, 1]")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
        if self.update_cap is not None:
            require(self.update_cap >= 1, "update_cap", self.update_cap, "an int >= 1 or null")
        require(self.workers >= 0, "workers", self.workers, "an int >= 0 (0: all cores)")

    def compiles(self) -> bool:
        """Whether a CPU run takes the compiled step."""
        auto = self.mode == "cbow" or self.hogwild
        return self.compile == "always" or (self.compile == "auto" and auto)

    def training_digest(self) -> str:
        """What the trained vectors depend on (not workers, device or progress bars)."""
        fields = asdict(self)
        for key in ("workers", "device", "cuda_graphs", "progress", "lowercase"):
            fields.pop(key)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
