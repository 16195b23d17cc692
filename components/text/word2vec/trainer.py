"""word2vec's trainer: `train_word2vec(sentences, config)` -> `Word2Vec`, as word2vec.c trains.

    model = train_word2vec(sentences, Word2VecConfig(mode="skipgram"), tokenizer=tok)

`sentences` is a zero-argument callable returning a fresh pass over the corpus (sequences of
token ids, or of words), so a corpus streamed from Parquet is never held in memory. What
word2vec.c does is kept: `min_count`/`max_vocab`, frequent-unit subsampling, negatives from
the unigram distribution ** 0.75, a window shrunk at random per center, a learning rate
decaying linearly to `min_alpha_ratio` of its start, separate input and output matrices.

Here: the epoch loop (chunks streamed from the encoded corpus, the learning-rate schedule,
hogwild threads), checkpoints after every epoch and the resume from them. The batch step
itself is in `sgd` (eager), `compiled` (CPU, `torch.compile`) and `graphs` (CUDA graphs); the
data path (encoded corpus, windows, negatives) in `data`; the trained object in `vectors`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from components.device import select_device
from components.text.bpe.tokenizer import BpeTokenizer
from components.text.word2vec.config import Word2VecConfig
from components.text.word2vec.data import (
    AliasTable,
    EncodedCorpus,
    Sentences,
    interleaved_batches,
    subsample,
    windows,
)
from components.text.word2vec.graphs import GraphedKernel
from components.text.word2vec.sgd import SgdKernel
from components.text.word2vec.vectors import Word2Vec
from components.text.word2vec.vocabulary import Vocabulary

if TYPE_CHECKING:
    from components.text.word2vec.compiled import CompiledKernel

    Kernel = SgdKernel | GraphedKernel | CompiledKernel

CHUNK = 1 << 18  # positions per streamed chunk: bounds memory of the window arrays
CHECKPOINT = "checkpoint.safetensors"
# Bump when the same config would draw other samples, or the checkpoint's layout changes
# (6: it carries the on_metrics calls): old checkpoints then restart.
TRAINER = 6


class EmptyCorpusError(ValueError):
    """No training data: an empty stream, or a vocabulary empty after `min_count`."""


class DivergedError(ValueError):
    """The loss stopped being finite: the learning rate or the per-row update cap is too
    large for the batch size. Raised at the first such chunk, before that epoch's checkpoint."""


def pick_device(name: str, key: str = "device") -> torch.device:
    """`components.device.select_device` with word2vec's `auto`: CUDA, else the CPU."""
    return select_device(name, key=key, auto=("cuda",))


def train_word2vec(
    sentences: Sentences,
    config: Word2VecConfig,
    *,
    tokenizer: BpeTokenizer | None = None,
    work_dir: str | Path | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> Word2Vec:
    """Train on `sentences()`; with `work_dir`, checkpoint there after every epoch and resume
    from the last finished epoch when a checkpoint made with the same data and config is
    present (the result equals an uninterrupted run). `on_metrics(step, {"loss", "lr",
    "epoch"})` is called after each streamed chunk, `step` counting corpus positions trained
    on; a resumed run first replays the calls of the epochs it resumes after (the checkpoint
    keeps them), so the caller sees an uninterrupted run's calls. `tokenizer` (token units)
    goes with the vectors, which compose words from its tokens."""
    device = pick_device(config.device)  # before the corpus pass, which can take long
    with ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="w2v-"))
        work = Path(work_dir)
        vocab, corpus = EncodedCorpus.build(
            sentences(), config.min_count, config.max_vocab, work / "encoded", config.progress
        )
        if corpus.n_raw == 0:
            raise EmptyCorpusError(f"empty token stream: {corpus.n_sentences} sentences, 0 units")
        if len(vocab) == 0:
            raise EmptyCorpusError(
                f"vocabulary empty after min_count = {config.min_count}: the most frequent "
                f"of {corpus.n_distinct} distinct units occurs {corpus.top_count} times"
            )
        digest = _vocab_digest(vocab)
        trainer = _Trainer(config, vocab, corpus, work, digest, on_metrics, device)
        w_in, w_out, history = trainer.run()
    vectors, output = (w.float().cpu().numpy() for w in (w_in, w_out))
    return Word2Vec(config, vocab, vectors, output, tokenizer, history)


def _in_order(pool: ThreadPoolExecutor, fn: Callable, jobs: Iterator[tuple], ahead: int):
    """`fn(*job)` for every job on `pool`, at most `ahead` submitted at once; yields the results
    in job order."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(fn, *job))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _one_thread() -> None:
    torch.set_num_threads(1)  # per thread: a hogwild thread's ops must not start OpenMP teams


def _chunk_seed(seed: int, epoch: int, chunk: int) -> int:
    """A generator seed per (seed, epoch, chunk): an epoch replays the same draws after a
    resume, and a chunk draws the same whichever thread trains it."""
    state = np.random.SeedSequence([seed, epoch, chunk]).generate_state(1, np.uint64)
    return int(state[0] >> 1)


def _vocab_digest(vocab: Vocabulary) -> str:
    data = json.dumps([vocab.keys, vocab.counts.tolist()]).encode()
    return hashlib.sha256(data).hexdigest()[:16]


class _Trainer:
    """The epoch loop: streams chunks, draws windows and negatives, decays the learning rate,
    checkpoints each epoch. Randomness per chunk comes from (seed, epoch, chunk), so resuming at
    an epoch boundary replays exactly what an uninterrupted run would do, and hogwild threads
    draw what one thread would. Every `on_metrics` call is kept in `calls` and checkpointed,
    so a resumed run replays the calls of the epochs it skips."""

    def __init__(
        self, config, vocab, corpus, work: Path, digest: str, on_metrics, device: torch.device
    ) -> None:
        self.config, self.vocab, self.corpus, self.work = config, vocab, corpus, work
        self.digest = f"{digest}-{config.training_digest()}-t{TRAINER}"
        self.on_metrics = on_metrics or (lambda step, metrics: None)
        self.calls: list[tuple[int, dict[str, float]]] = []  # (step, metrics) so far
        self.device = device
        self.workers = config.workers or os.cpu_count() or 1
        # threads that each train whole chunks (1: one stream of batches)
        self.hogwild = self.workers if config.hogwild and self.device.type == "cpu" else 1
        keep = vocab.keep_probabilities(config.sample)
        self.keep = torch.from_numpy(keep).float().to(self.device)
        probabilities = np.diff(vocab.negative_cdf(), prepend=0.0)
        self.negatives = AliasTable(probabilities, self.device)
        # Bigger batches need bigger chunks, or a chunk's radius groups make ragged batches.
        most = max(CHUNK, 16 * config.batch_size)
        # Chunks of equal size: no short last chunk leaves hogwild threads idle at an epoch's end
        n = max(corpus.n_positions, 1)
        self.chunk = -(-n // -(-n // most))

    @torch.no_grad()
    def run(self) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        cfg = self.config
        w_in, w_out, start, history, calls = self._resume() or self._init()
        if start:
            print(
                f"word2vec: resuming after epoch {start} of {cfg.epochs} from "
                f"{self.work / CHECKPOINT}",
                file=sys.stderr,
            )
        for step, metrics in calls:  # what the caller saw before the interruption
            self._report(step, metrics)
        hogwild = self.hogwild
        # Hogwild threads each run whole steps: no batch is split between them.
        sgd = SgdKernel(w_in, w_out, cfg.mode, self.workers // hogwild, cfg.update_cap)
        kernel: Kernel = sgd
        # what hogwild threads need of the kernel while they run
        shared: AbstractContextManager[None] = nullcontext()
        if self.device.type == "cuda" and cfg.cuda_graphs:
            kernel = GraphedKernel(sgd, cfg.batch_size, cfg.negative)
        elif self.device.type == "cpu" and cfg.compiles():
            from components.text.word2vec.compiled import CompiledKernel  # torch._dynamo: ~1 s

            kernel = CompiledKernel(sgd, cfg.batch_size)
            if hogwild > 1:  # worker threads should only run kernels: compile every width first
                shared = kernel.shared(range(2, 2 * cfg.window + 1, 2), cfg.negative)
        threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(hogwild, initializer=_one_thread) if hogwild > 1 else None
        total = cfg.epochs * self.corpus.n_positions
        bar = tqdm(
            total=total, initial=start * self.corpus.n_positions, unit="word", unit_scale=True,
            desc=f"word2vec {cfg.mode}", disable=not cfg.progress,
        )  # fmt: skip
        try:
            torch.set_num_threads(1)  # before compiling: kernels are made for this many
            with shared:
                for epoch in range(start, cfg.epochs):
                    history.append(self._epoch(kernel, epoch, total, bar, pool))
                    self._checkpoint(w_in, w_out, epoch + 1, history)
        finally:
            torch.set_num_threads(threads)
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            kernel.close()
            bar.close()
        return w_in, w_out, history

    def _init(self):
        gen = torch.Generator().manual_seed(self.config.seed)
        v, d = len(self.vocab), self.config.dim
        w_in = (torch.rand(v, d, generator=gen) - 0.5) / d  # word2vec.c's initialisation
        w_out = torch.zeros(v, d)
        return w_in.to(self.device), w_out.to(self.device), 0, [], []

    def _epoch(
        self, kernel: Kernel, epoch: int, total: int, bar: tqdm, pool: ThreadPoolExecutor | None
    ) -> float:
        """Trains every chunk once, on `pool`'s threads at once when given (hogwild); reports
        chunks in corpus order either way."""

        def jobs() -> Iterator[tuple]:
            done = epoch * self.corpus.n_positions
            for index, (ids, sent) in enumerate(self.corpus.chunks(self.chunk)):
                yield kernel, _chunk_seed(self.config.seed, epoch, index), ids, sent, done, total
                done += len(ids)

        if pool is None:
            results = (self._chunk(*job) for job in jobs())
        else:  # a few chunks ahead keep every thread busy; memory stays a few chunks
            results = _in_order(pool, self._chunk, jobs(), 2 * self.hogwild)
        loss_sum = examples = 0.0
        for done, n_ids, chunk_loss, chunk_examples, alpha in results:
            if not math.isfinite(chunk_loss):
                cfg = self.config
                raise DivergedError(
                    f"word2vec diverged in epoch {epoch + 1} (loss {chunk_loss} after {done:,} "
                    f"of {total:,} positions): alpha = {cfg.alpha}, update_cap = "
                    f"{cfg.update_cap}, batch_size = {cfg.batch_size}; lower one of them"
                )
            loss_sum, examples = loss_sum + chunk_loss, examples + chunk_examples
            mean = chunk_loss / max(chunk_examples, 1)
            self._report(done, {"loss": mean, "lr": alpha, "epoch": epoch + 1})
            bar.update(n_ids)
            bar.set_postfix(lr=f"{alpha:.2e}", loss=f"{mean:.3f}")
        return loss_sum / max(examples, 1)

    def _report(self, step: int, metrics: dict[str, float]) -> None:
        self.calls.append((step, dict(metrics)))  # a copy: the callback may change its own
        self.on_metrics(step, metrics)

    @torch.no_grad()  # in every thread alike: compiled steps are guarded on the grad mode
    def _chunk(
        self, kernel: Kernel, seed: int, ids: np.ndarray, sent: np.ndarray, done: int, total: int
    ) -> tuple[int, int, float, float, float]:
        """Trains one chunk that starts `done` positions into the run; returns the positions
        done after it, its positions, summed loss and examples, and the last learning rate."""
        cfg = self.config
        gen = torch.Generator(self.device).manual_seed(seed)
        if len(ids) and not 0 <= ids.min() <= ids.max() < len(self.vocab):
            # the compiled step indexes the matrices unchecked: never hand it a stray row
            raise ValueError(
                f"{self.corpus.directory}: ids {ids.min()}..{ids.max()} outside the "
                f"vocabulary of {len(self.vocab)}"
            )
        ids_t, sent_t = (torch.from_numpy(a).to(self.device) for a in (ids, sent))
        ids_kept, sent_kept = subsample(ids_t, sent_t, self.keep, gen)
        n = len(ids_kept)
        chunk_loss = chunk_examples = torch.zeros((), device=self.device)
        seen = 0
        alpha = cfg.alpha
        groups = windows(ids_kept, sent_kept, cfg.window, gen)
        negatives = [self.negatives.draw((len(g), cfg.negative), gen) for g in groups]
        for batch, negs in interleaved_batches(groups, negatives, cfg.batch_size):
            progress = (done + len(ids) * seen / max(n, 1)) / total
            alpha = cfg.alpha * max(cfg.min_alpha_ratio, 1.0 - progress)
            loss, count = kernel.step(batch, negs, alpha)
            chunk_loss, chunk_examples = chunk_loss + loss, chunk_examples + count
            seen += len(batch)
        # one sync per chunk
        return done + len(ids), len(ids), chunk_loss.item(), chunk_examples.item(), alpha

    def _checkpoint(self, w_in, w_out, epochs_done: int, history: list[float]) -> None:
        meta = {
            "digest": self.digest,
            "epochs_done": str(epochs_done),
            "history": json.dumps(history),
            "calls": json.dumps(self.calls),  # floats round-trip exactly through JSON
        }
        tmp = self.work / (CHECKPOINT + ".tmp")
        save_file({"input": w_in.cpu(), "output": w_out.cpu()}, tmp, metadata=meta)
        os.replace(tmp, self.work / CHECKPOINT)

    def _resume(self):
        """(w_in, w_out, epochs done, history, on_metrics calls) from the checkpoint, or None
        to start over: no checkpoint, one of another corpus or config, or an unreadable one
        (it is derived state: a warning, then a fresh start)."""
        path = self.work / CHECKPOINT
        if not path.is_file():
            return None
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                if meta.get("digest") != self.digest:
                    return None  # another corpus or config: start over
                w_in, w_out = f.get_tensor("input"), f.get_tensor("output")
            start, history = int(meta["epochs_done"]), json.loads(meta["history"])
            calls = [(int(step), metrics) for step, metrics in json.loads(meta["calls"])]
            shape = (len(self.vocab), self.config.dim)
            if tuple(w_in.shape) != shape or tuple(w_out.shape) != shape:
                raise ValueError(f"matrices {list(w_in.shape)}, expected {list(shape)}")
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
            print(
                f"word2vec: warning: {path}: unreadable checkpoint (truncated or corrupt?), "
                f"starting over: {err}",
                file=sys.stderr,
            )
            return None
        return w_in.to(self.device), w_out.to(self.device), start, history, calls
