"""word2vec data: the vocabulary, the corpus encoded once to disk, and per-epoch windows.

The corpus is read twice (count, then encode) and afterwards lives as two int32 files in a
work directory: `ids.i32` (vocabulary indices; out-of-vocabulary units are dropped before
windowing, as word2vec.c does) and `sent.i32` (the sentence number of each position).
Epochs stream those files in sentence-aligned chunks through `np.memmap`, so memory is
bounded by the chunk size and the vocabulary, never by the corpus.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Key = Hashable  # a word (str) or a token id (int)
Sentences = Callable[[], Iterable[Sequence]]  # re-iterable corpus: a fresh pass per call


@dataclass(frozen=True)
class Vocabulary:
    """keys: units kept, most frequent first (ties broken by key); counts: int64 [V]."""

    keys: list
    counts: np.ndarray

    @classmethod
    def build(cls, counts: Counter, min_count: int, max_vocab: int | None) -> Vocabulary:
        """Units seen >= `min_count` times, the `max_vocab` most frequent of them."""
        kept = sorted(((k, c) for k, c in counts.items() if c >= min_count), key=_rank)
        kept = kept[:max_vocab] if max_vocab is not None else kept
        return cls([k for k, _ in kept], np.array([c for _, c in kept], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def total(self) -> int:
        """Occurrences of in-vocabulary units in the corpus (word2vec.c's `train_words`)."""
        return int(self.counts.sum())

    def index(self) -> dict:
        return {k: i for i, k in enumerate(self.keys)}

    def keep_probabilities(self, sample: float) -> np.ndarray:
        """word2vec.c's subsampling: a unit of corpus frequency f = count / total survives with
        probability min(1, (sqrt(f / sample) + 1) * sample / f); `sample = 0` keeps all.
        float64 [V]."""
        if sample <= 0:
            return np.ones(len(self), dtype=np.float64)
        threshold = sample * self.total
        counts = self.counts.astype(np.float64)
        return np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)

    def negative_cdf(self, power: float = 0.75) -> np.ndarray:
        """Cumulative unigram distribution raised to `power` (negative sampling). float64 [V]."""
        weights = self.counts.astype(np.float64) ** power
        cdf = np.cumsum(weights / weights.sum())
        cdf[-1] = 1.0
        return cdf


def _rank(item: tuple[Key, int]) -> tuple:
    key, count = item
    return (-count, str(type(key)), key)


def count_units(sentences: Iterable[Sequence]) -> tuple[Counter, int, int]:
    """(unit counts, sentences, units) over one pass of the corpus."""
    counts: Counter = Counter()
    n_sentences = n_units = 0
    for sentence in sentences:
        if isinstance(sentence, np.ndarray) and sentence.dtype.kind in "iu":
            values, freq = np.unique(sentence, return_counts=True)
            counts.update(dict(zip(values.tolist(), freq.tolist(), strict=True)))
        else:
            counts.update(sentence)
        n_sentences += 1
        n_units += len(sentence)
    return counts, n_sentences, n_units


class EncodedCorpus:
    """The in-vocabulary positions of a corpus as int32 memmaps under `directory`."""

    FORMAT = 1

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        meta = json.loads((self.directory / "encoded.json").read_text())
        self.n_positions: int = meta["positions"]
        self.n_raw: int = meta["raw_units"]
        self.digest: str = meta["vocab_digest"]

    @classmethod
    def write(
        cls, sentences: Iterable[Sequence], vocab: Vocabulary, directory: Path, digest: str
    ) -> EncodedCorpus:
        """Encode every sentence with `vocab` (dropping unknown units) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        encode = _encoder(vocab)
        positions = raw = 0
        with open(directory / "ids.i32", "wb") as ids, open(directory / "sent.i32", "wb") as sent:
            for number, sentence in enumerate(sentences):
                raw += len(sentence)
                coded = encode(sentence)
                if len(coded) == 0:
                    continue
                ids.write(coded.tobytes())
                sent.write(np.full(len(coded), number, dtype=np.int32).tobytes())
                positions += len(coded)
        meta = {"format": cls.FORMAT, "positions": positions, "raw_units": raw}
        tmp = directory / "encoded.json.tmp"
        tmp.write_text(json.dumps(meta | {"vocab_digest": digest}))
        os.replace(tmp, directory / "encoded.json")
        return cls(directory)

    @classmethod
    def open(cls, directory: Path, digest: str) -> EncodedCorpus | None:
        """The encoding in `directory` if it was made with the vocabulary `digest`."""
        try:
            corpus = cls(directory)
        except (OSError, ValueError, KeyError):
            return None
        return corpus if corpus.digest == digest else None

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, sentence numbers) int64 arrays of about `size` positions, ending on a sentence
        boundary (unless one sentence is longer than `size`), in corpus order."""
        if self.n_positions == 0:
            return
        ids = np.memmap(self.directory / "ids.i32", dtype=np.int32, mode="r")
        sent = np.memmap(self.directory / "sent.i32", dtype=np.int32, mode="r")
        start = 0
        while start < self.n_positions:
            end = min(start + size, self.n_positions)
            if end < self.n_positions:
                last = sent[end - 1]
                # extend to the end of the sentence cut at `end`, within one more chunk
                tail = sent[end : min(end + size, self.n_positions)]
                end += int(np.searchsorted(tail, last, side="right"))
            yield (
                np.array(ids[start:end], dtype=np.int64),
                np.array(sent[start:end], dtype=np.int64),
            )
            start = end


def _encoder(vocab: Vocabulary) -> Callable[[Sequence], np.ndarray]:
    if vocab.keys and all(isinstance(k, int) for k in vocab.keys[:1]):
        table = np.full(max(vocab.keys) + 1, -1, dtype=np.int32)
        table[np.asarray(vocab.keys)] = np.arange(len(vocab), dtype=np.int32)

        def encode_ids(sentence: Sequence) -> np.ndarray:
            ids = np.asarray(sentence, dtype=np.int64)
            ids = ids[(ids >= 0) & (ids < len(table))]
            coded = table[ids]
            return coded[coded >= 0]

        return encode_ids
    index = vocab.index()

    def encode_words(sentence: Sequence) -> np.ndarray:
        coded = [i for i in map(index.get, sentence) if i is not None]
        return np.asarray(coded, dtype=np.int32)

    return encode_words


@dataclass
class Windows:
    """Training examples: centers that share one window radius r, with their contexts.

    centers: int64 [B] vocabulary indices
    context: int64 [B, 2r] vocabulary indices at offsets -r..-1, 1..r (clamped to the chunk
             where masked, so every index is a real row)
    mask:    bool [B, 2r] the slot is inside the chunk and in the center's sentence
    All three live on the training device.
    """

    centers: torch.Tensor
    context: torch.Tensor
    mask: torch.Tensor

    def slice(self, start: int, stop: int) -> Windows:
        return Windows(self.centers[start:stop], self.context[start:stop], self.mask[start:stop])

    def __len__(self) -> int:
        return len(self.centers)


def subsample(
    ids: torch.Tensor, sent: torch.Tensor, keep: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop frequent units with their keep probabilities (before windowing, as word2vec.c).
    ids, sent [n] and keep [V] on the generator's device."""
    kept = torch.rand(len(ids), generator=gen, device=ids.device) < keep[ids]
    return ids[kept], sent[kept]


def windows(
    ids: torch.Tensor, sent: torch.Tensor, window: int, gen: torch.Generator
) -> list[Windows]:
    """Every position as a center with its window shrunk uniformly to r in 1..`window`
    (word2vec.c's `b = rand % window`), never crossing a sentence boundary; one `Windows` per
    radius, so a batch has no slots beyond its radius to pad. ids, sent: int64 [n]."""
    n, device = len(ids), ids.device
    radius = window - torch.randint(0, window, (n,), generator=gen, device=device)
    order = torch.argsort(radius, stable=True)  # positions grouped by radius, in corpus order
    sizes = torch.bincount(radius, minlength=window + 1)[1:].tolist()  # one sync per chunk
    groups = []
    for r, centers in zip(range(1, window + 1), order.split(sizes), strict=True):
        offsets = torch.cat([torch.arange(-r, 0), torch.arange(1, r + 1)]).to(device)
        pos = centers[:, None] + offsets[None, :]
        mask = (pos >= 0) & (pos < n)
        pos = pos.clamp(0, max(n - 1, 0))
        mask &= sent[pos] == sent[centers][:, None]
        groups.append(Windows(centers=ids[centers], context=ids[pos], mask=mask))
    return groups


class AliasTable:
    """O(1) draws from a discrete distribution (Walker/Vose alias method)."""

    def __init__(self, probabilities: np.ndarray, device: torch.device | str = "cpu"):
        n = len(probabilities)
        scaled = probabilities / probabilities.sum() * n
        prob = np.ones(n, dtype=np.float64)
        alias = np.arange(n, dtype=np.int64)
        small = [i for i in range(n) if scaled[i] < 1.0]
        large = [i for i in range(n) if scaled[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            prob[s], alias[s] = scaled[s], g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        self.prob = torch.from_numpy(prob).float().to(device)
        self.alias = torch.from_numpy(alias).to(device)

    def draw(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        """int64 `shape` of indices, on the table's device (the generator's)."""
        device = self.prob.device
        column = torch.randint(0, len(self.prob), shape, generator=gen, device=device)
        accept = torch.rand(shape, generator=gen, device=device) < self.prob[column]
        return torch.where(accept, column, self.alias[column])
