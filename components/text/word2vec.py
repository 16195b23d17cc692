"""word2vec (skip-gram and CBOW with negative sampling) in plain torch, as word2vec.c trains it.

    model = Word2Vec.train(sentences, Word2VecConfig(mode="skipgram"), tokenizer=tok)
    model.most_similar("file", k=5); model.analogy("man", "king", "woman")
    model.save("out/"); Word2Vec.load("out/").export_word2vec("vectors.bin", binary=True)

`sentences` is a zero-argument callable returning a fresh pass over the corpus (sequences of
token ids, or of words), so a corpus streamed from Parquet is never held in memory. What
word2vec.c does is kept: `min_count`/`max_vocab`, frequent-unit subsampling, negatives from
the unigram distribution ** 0.75, a window shrunk at random per center, a learning rate
decaying linearly to `min_alpha_ratio` of its start, separate input and output matrices.
The batched update itself is in `w2v_train.py`, the data path in `w2v_data.py`.

Units: `token` models are trained on BPE ids; a word query is answered with the mean of the
input vectors of the word's tokens (as the tokenizer splits " word", mid-sentence), so words
the tokenizer splits still have vectors. `word` models are trained on whole words.
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
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from components.config import ConfigError, build, require
from components.inputs import json_type, read_json
from components.stage import StageInputError
from components.text.bpe import BpeTokenizer, bytes_to_unicode
from components.text.w2v_data import (
    AliasTable,
    EncodedCorpus,
    Sentences,
    Vocabulary,
    interleaved_batches,
    subsample,
    windows,
)
from components.text.w2v_graphs import GraphedKernel
from components.text.w2v_train import SgdKernel

if TYPE_CHECKING:
    from components.text.w2v_compiled import CompiledKernel

    Kernel = SgdKernel | GraphedKernel | CompiledKernel

FORMAT = 1
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


@dataclass
class Word2VecConfig:
    """word2vec.c's options, plus how the batched trainer runs.

    batch_size: centers per update (gradients of a batch are summed, so a larger batch is
        faster but adds more updates of a frequent word at once).
    update_cap: at most this many examples' worth of update per row and batch (null: no
        cap); see `w2v_train.row_scales`.
    workers: CPU threads (0: all cores); results do not depend on it, unless `hogwild`.
    hogwild: on CPU, run `workers` threads that each train their own chunks of the corpus at
        once, updating the shared matrices without locks, as word2vec.c and gensim do. Each
        thread's step is single-threaded, so more of the machine does useful work (and with
        `compile`, only this parallelises the compiled step), but updates race: results vary
        from run to run. Off (default): one stream of batches, each batch's gradients split
        over the threads and applied in a fixed order, so a seed gives one result.
    device: "auto" takes CUDA when present; the same code runs on both.
    cuda_graphs: on CUDA, replay each batch step from a captured CUDA graph (the same
        arithmetic, one launch instead of ~60; see `w2v_graphs`).
    compile: on CPU, run each batch step as C++ made by `torch.compile` (the same arithmetic up
        to float rounding; see `w2v_compiled`). "auto" compiles CBOW, ~2x faster that way, and
        skip-gram under `hogwild`; not skip-gram alone, whose compiled step on one core is only
        as fast as the eager one split over two.
        The first run at a new batch size, dim or window compiles for ~25-30 s; later runs
        load the kernels from Inductor's disk cache in ~3 s.
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
    workers: int = 0
    hogwild: bool = False
    seed: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_graphs: bool = True
    compile: Literal["auto", "always", "never"] = "auto"
    lowercase: bool = True
    progress: bool = True

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


def pick_device(name: str, key: str = "device") -> torch.device:
    """The torch device for config value `name`; `ConfigError` naming `key` for "cuda" on a
    machine without CUDA."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, name, "'auto' or 'cpu': torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Word2Vec:
    """Trained input (word) and output (context) vectors over a vocabulary.

    keys: display strings, most frequent first: words, or for token units GPT-2's printable
        spelling of each token's bytes ("Ġthe").
    vectors: float32 [V, D] input vectors (what queries use); output: [V, D].
    history: mean loss per example at the end of each epoch.
    """

    def __init__(
        self,
        config: Word2VecConfig,
        vocab: Vocabulary,
        vectors: torch.Tensor,
        output: torch.Tensor,
        tokenizer: BpeTokenizer | None = None,
        history: list[float] | None = None,
    ):
        self.config, self.vocab, self.tokenizer = config, vocab, tokenizer
        self.vectors = vectors.detach().float().cpu().numpy()
        self.output = output.detach().float().cpu().numpy()
        self.history = list(history or [])
        self.keys = [self._display(k) for k in vocab.keys]
        self._index = {k: i for i, k in enumerate(vocab.keys)}
        self._unit_rows: np.ndarray | None = None

    # ---- training -------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        sentences: Sentences,
        config: Word2VecConfig,
        *,
        tokenizer: BpeTokenizer | None = None,
        work_dir: str | Path | None = None,
        on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    ) -> Word2Vec:
        """Train on `sentences()`; with `work_dir`, checkpoint there after every epoch and
        resume from the last finished epoch when a checkpoint made with the same data and
        config is present (the result equals an uninterrupted run). `on_metrics(step,
        {"loss", "lr", "epoch"})` is called after each streamed chunk, `step` counting corpus
        positions trained on; a resumed run first replays the calls of the epochs it resumes
        after (the checkpoint keeps them), so the caller sees an uninterrupted run's calls."""
        device = pick_device(config.device)  # before the corpus pass, which can take long
        with ExitStack() as stack:
            if work_dir is None:
                work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="w2v-"))
            work = Path(work_dir)
            vocab, corpus = EncodedCorpus.build(
                sentences(), config.min_count, config.max_vocab, work / "encoded", config.progress
            )
            if corpus.n_raw == 0:
                raise EmptyCorpusError(
                    f"empty token stream: {corpus.n_sentences} sentences, 0 units"
                )
            if len(vocab) == 0:
                raise EmptyCorpusError(
                    f"vocabulary empty after min_count = {config.min_count}: the most frequent "
                    f"of {corpus.n_distinct} distinct units occurs {corpus.top_count} times"
                )
            digest = _vocab_digest(vocab)
            trainer = _Trainer(config, vocab, corpus, work, digest, on_metrics, device)
            w_in, w_out, history = trainer.run()
        return cls(config, vocab, w_in, w_out, tokenizer, history)

    # ---- queries --------------------------------------------------------------------------

    def vector(self, word: str | int) -> np.ndarray | None:
        """Input vector [D] of a word (composed from its tokens for token units), of a token id
        (int, token units) or of a display key; None when it cannot be represented."""
        row = self._row(word)
        if row is not None:
            return self.vectors[row]
        if self.config.unit == "token" and isinstance(word, str) and self.tokenizer is not None:
            text = word.lower() if self.config.lowercase else word
            ids = self.tokenizer.encode_ordinary(" " + text)
            rows = [self._index.get(i) for i in ids]
            if ids and None not in rows:
                return self.vectors[rows].mean(axis=0)
        return None

    def _row(self, word: str | int) -> int | None:
        if isinstance(word, int | np.integer):
            return self._index.get(int(word)) if self.config.unit == "token" else None
        if self.config.unit == "word":
            return self._index.get(word.lower() if self.config.lowercase else word)
        return self._key_rows().get(word)

    def _key_rows(self) -> dict[str, int]:
        if not hasattr(self, "_keys_index"):
            self._keys_index = {k: i for i, k in enumerate(self.keys)}
        return self._keys_index

    def vocabulary(self, top_n: int | None = None) -> tuple[list[str], np.ndarray]:
        """Words a query can answer with, most frequent first, and their vectors [n, D]: the
        vocabulary for word units; for token units the tokens that are a whole word
        (a space then letters), spelled without the space."""
        if self.config.unit == "word":
            rows = np.arange(len(self.keys))
            words = list(self.keys)
        else:
            pairs = [(i, w) for i, w in enumerate(map(self._whole_word, self.vocab.keys)) if w]
            rows = np.array([i for i, _ in pairs], dtype=np.int64)
            words = [w for _, w in pairs]
        if top_n is not None:
            rows, words = rows[:top_n], words[:top_n]
        return words, self.vectors[rows]

    def _whole_word(self, token_id: int) -> str | None:
        """The word a token spells when its bytes are a space then letters, else None."""
        if self.tokenizer is None or token_id in self.tokenizer.special_tokens.values():
            return None
        raw = self.tokenizer.token_bytes(int(token_id))
        word = raw[1:].decode("utf-8", errors="replace")
        return word if raw[:1] == b" " and word.isalpha() else None

    def _spellings(self, query: object) -> set:
        """The forms of a query word an answer must not repeat: as typed, as looked up
        (lowercased), and a token key's word ("Ġthe" -> "the")."""
        if not isinstance(query, str):
            return set()
        forms = {query, query.lower() if self.config.lowercase else query}
        return forms | {f[1:] for f in forms if f[:1] == "Ġ"}

    def most_similar(self, query: str | int | np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """The `k` vocabulary words nearest to `query` by cosine (the query word excluded)."""
        vec = query if isinstance(query, np.ndarray) else self.vector(query)
        if vec is None:
            raise KeyError(f"{query!r} is not in the vocabulary and cannot be composed")
        exclude = self._spellings(query)
        return self._nearest(vec, k, exclude)

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """a is to b as c is to ?: 3CosAdd, the words nearest unit(b) - unit(a) + unit(c)."""
        vecs = [self.vector(w) for w in (a, b, c)]
        missing = [w for w, v in zip((a, b, c), vecs, strict=True) if v is None]
        if missing:
            raise KeyError(f"not in the vocabulary: {missing}")
        unit = [v / max(np.linalg.norm(v), 1e-12) for v in vecs]
        exclude = self._spellings(a) | self._spellings(b) | self._spellings(c)
        return self._nearest(unit[1] - unit[0] + unit[2], k, exclude)

    def _nearest(self, vec: np.ndarray, k: int, exclude: set) -> list[tuple[str, float]]:
        words, vectors = self.vocabulary()
        if self._unit_rows is None:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            self._unit_rows = vectors / np.maximum(norms, 1e-12)
        sims = self._unit_rows @ (vec / max(np.linalg.norm(vec), 1e-12))
        order = np.argsort(-sims, kind="stable")
        hits = [(words[i], float(sims[i])) for i in order[: k + len(exclude)]]
        return [h for h in hits if h[0] not in exclude][:k]

    # ---- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write `model.safetensors`, `vocab.json`, `config.json` (+ `tokenizer/`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"input": torch.from_numpy(self.vectors), "output": torch.from_numpy(self.output)}
        save_file(tensors, directory / "model.safetensors", metadata={"format": str(FORMAT)})
        keys = self.vocab.keys
        vocab = {"unit": self.config.unit, "keys": keys, "counts": self.vocab.counts.tolist()}
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        meta = {"format": FORMAT, "config": asdict(self.config), "history": self.history}
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        if self.tokenizer is not None:
            self.tokenizer.save(directory / "tokenizer")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Word2Vec:
        """Read what `save` wrote. Each file is checked first: a missing, truncated or
        inconsistent one is a `StageInputError` naming it and what is wrong."""
        directory = Path(directory)
        config, history = _read_config(directory / "config.json")
        vocab = _read_vocab(directory / "vocab.json", config.unit)
        w_in, w_out = _read_matrices(directory / "model.safetensors", len(vocab), config.dim)
        tok_dir = directory / "tokenizer"
        tokenizer = BpeTokenizer.load(tok_dir) if tok_dir.is_dir() else None
        if tokenizer is not None and config.unit == "token" and vocab.keys:
            low, high = min(vocab.keys), max(vocab.keys)
            if low < 0 or high >= tokenizer.vocab_size:
                raise StageInputError(
                    f"{directory / 'vocab.json'}: token id {low if low < 0 else high} is "
                    f"outside the vocabulary 0..{tokenizer.vocab_size - 1} of {tok_dir}"
                )
        return cls(config, vocab, w_in, w_out, tokenizer, history)

    def export_word2vec(self, path: str | Path, binary: bool = False) -> Path:
        """The input vectors in word2vec.c's text or binary format (gensim's
        `KeyedVectors.load_word2vec_format` reads both)."""
        path = Path(path)
        n, dim = self.vectors.shape
        with open(path, "wb") as out:
            out.write(f"{n} {dim}\n".encode())
            for key, vec in zip(self.keys, self.vectors.astype(np.float32), strict=True):
                if binary:
                    out.write(key.encode() + b" " + vec.tobytes() + b"\n")
                else:
                    out.write((key + " " + " ".join(f"{x:.6g}" for x in vec) + "\n").encode())
        return path

    def export_safetensors(self, path: str | Path) -> Path:
        """{"vectors": [V, D]}; metadata "word2vec" = JSON {"unit", "keys": [V strings]}.

        One metadata entry on purpose: safetensors writes several in a per-process random
        order, and this file is a versioned output whose bytes must not vary between runs."""
        tensors = {"vectors": torch.from_numpy(np.ascontiguousarray(self.vectors))}
        info = {"unit": self.config.unit, "keys": self.keys}
        metadata = {"word2vec": json.dumps(info, ensure_ascii=False)}
        save_file(tensors, Path(path), metadata=metadata)
        return Path(path)

    def _display(self, key: str | int) -> str:
        if self.config.unit == "word" or self.tokenizer is None:
            return str(key)
        specials = {v: k for k, v in self.tokenizer.special_tokens.items()}
        if key in specials:
            return specials[key]
        table = bytes_to_unicode()
        return "".join(table[b] for b in self.tokenizer.token_bytes(int(key)))


def _read_config(path: Path) -> tuple[Word2VecConfig, list[float]]:
    """The config and loss history in a saved model's `config.json`."""
    meta = _json_object(path)
    if meta.get("format") != FORMAT:
        raise StageInputError(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")
    section, history = meta.get("config"), meta.get("history")
    if not isinstance(section, dict):
        raise StageInputError(f"{path}: 'config' is {json_type(section)}, expected an object")
    try:
        config = build(Word2VecConfig, section, "config")
    except ConfigError as err:
        raise StageInputError(f"{path}: {err}") from None
    if not (isinstance(history, list) and all(map(_is_number, history))):
        raise StageInputError(f"{path}: 'history' is not an array of numbers")
    return config, history


def _read_vocab(path: Path, unit: str) -> Vocabulary:
    """The vocabulary in a saved model's `vocab.json`: distinct keys (ints for token units,
    strings for word units), one count >= 0 each."""
    raw = _json_object(path)
    missing = [key for key in ("unit", "keys", "counts") if key not in raw]
    if missing:
        raise StageInputError(f"{path}: missing keys {missing}")
    if raw["unit"] != unit:
        raise StageInputError(f"{path}: unit {raw['unit']!r}, but config.json says {unit!r}")
    keys, counts = raw["keys"], raw["counts"]
    key_type = int if unit == "token" else str
    if not (isinstance(keys, list) and all(_is_a(k, key_type) for k in keys)):
        raise StageInputError(f"{path}: 'keys' is not an array of {key_type.__name__}s")
    if len(set(keys)) != len(keys):
        raise StageInputError(f"{path}: 'keys' holds duplicates")
    if not (isinstance(counts, list) and all(_is_a(c, int) and c >= 0 for c in counts)):
        raise StageInputError(f"{path}: 'counts' is not an array of ints >= 0")
    if len(counts) != len(keys):
        raise StageInputError(f"{path}: {len(keys)} keys but {len(counts)} counts")
    return Vocabulary(keys, np.asarray(counts, dtype=np.int64))


def _read_matrices(path: Path, size: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output vectors in `model.safetensors`, each float [size, dim]."""
    if not path.is_file():
        raise StageInputError(f"{path}: file not found")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise StageInputError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {err}"
        ) from None
    missing = [name for name in ("input", "output") if name not in tensors]
    if missing:
        raise StageInputError(f"{path}: missing tensors {missing} (has {sorted(tensors)})")
    for name in ("input", "output"):
        tensor = tensors[name]
        if tuple(tensor.shape) != (size, dim) or not tensor.is_floating_point():
            raise StageInputError(
                f"{path}: tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, expected "
                f"float [{size}, {dim}] ({size} keys in vocab.json, dim {dim} in config.json)"
            )
    return tensors["input"], tensors["output"]


def _json_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise StageInputError(f"{path}: expected a JSON object, found {json_type(data)}")
    return data


def _is_a(value: object, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)  # JSON true is no int


def _is_number(value: object) -> bool:
    return _is_a(value, int) or _is_a(value, float)


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
        kernel = SgdKernel(w_in, w_out, cfg.mode, self.workers // hogwild, cfg.update_cap)
        shared = nullcontext()  # what hogwild threads need of the kernel while they run
        if self.device.type == "cuda" and cfg.cuda_graphs:
            kernel = GraphedKernel(kernel, cfg.batch_size, cfg.negative)
        elif self.device.type == "cpu" and cfg.compiles():
            from components.text.w2v_compiled import CompiledKernel  # imports torch._dynamo: ~1 s

            kernel = CompiledKernel(kernel, cfg.batch_size)
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
        ids, sent = (torch.from_numpy(a).to(self.device) for a in (ids, sent))
        ids_kept, sent_kept = subsample(ids, sent, self.keep, gen)
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
