"""A word2vec run in its own process, for tests that kill it mid-training.

    python -m tests.components.text.word2vec.train_script WORK_DIR OUT.npz [--kill-in-epoch N]
        [--dim D]

Trains on `corpus()` with `config()` and small streamed chunks (several per epoch), then
saves the input and output vectors, the loss history and every `on_metrics` call (arrays
`steps`, `loss`, `lr`, `epoch`, one entry per call) to OUT.npz. With `--kill-in-epoch N` the
process SIGKILLs itself after the first chunk of epoch N (1-based), leaving only what the run
had checkpointed in WORK_DIR.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import numpy as np

from components.text.word2vec import trainer
from components.text.word2vec.config import Word2VecConfig
from components.text.word2vec.trainer import train_word2vec

CHUNK = 256  # positions per chunk: the corpus below is ~1600, so ~7 chunks per epoch


def corpus(seed: int = 0) -> list[list[str]]:
    """200 sentences of 8 words, each drawn from one of two 8-word clusters."""
    rng = np.random.default_rng(seed)
    clusters = [[f"a{i}" for i in range(8)], [f"b{i}" for i in range(8)]]
    return [[str(w) for w in rng.choice(clusters[s % 2], size=8)] for s in range(200)]


def config(**changes) -> Word2VecConfig:
    base = dict(
        unit="word", dim=8, window=3, negative=3, sample=1e-2, min_count=1, epochs=3,
        batch_size=32, workers=1, seed=3, device="cpu", progress=False,
    )  # fmt: skip
    return Word2VecConfig(**(base | changes))


def train(work_dir: Path | None, kill_in_epoch: int | None = None, **changes):
    """Train (trainer.CHUNK must be `CHUNK`); returns the model and the `on_metrics` calls,
    [(step, metrics), ...]."""
    calls: list[tuple[int, dict[str, float]]] = []

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        calls.append((step, dict(metrics)))
        if metrics["epoch"] == kill_in_epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    sentences = corpus()
    model = train_word2vec(
        lambda: sentences, config(**changes), work_dir=work_dir, on_metrics=on_metrics
    )
    return model, calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-in-epoch", type=int)
    parser.add_argument("--dim", type=int, default=8)
    args = parser.parse_args()
    trainer.CHUNK = CHUNK
    model, calls = train(args.work_dir, args.kill_in_epoch, dim=args.dim)
    metrics = {key: np.array([m[key] for _, m in calls]) for key in ("loss", "lr", "epoch")}
    np.savez(
        args.out, vectors=model.vectors, output=model.output, history=np.array(model.history),
        steps=np.array([step for step, _ in calls]), **metrics,
    )  # fmt: skip


if __name__ == "__main__":
    main()
