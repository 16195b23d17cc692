"""word2vec's data path: the corpus encoded once to disk, and per-epoch windows and negatives.

The corpus is read once: each unit is written as a provisional id (first-seen order) and
counted; once the vocabulary is known, numpy remaps those ids in chunks. The result
lives as two int32 files in a work directory: `ids.i32` (vocabulary indices; units out of the
vocabulary are dropped before windowing, as word2vec.c does) and `sent.i32` (the sentence
number of each position). Epochs stream those files in sentence-aligned chunks through
`np.memmap`, so memory is bounded by the chunk size and the vocabulary, never by the corpus.
`Vocabulary` lives in `vocabulary`, apart: the trained vectors need it, not this data path.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from components.text.word2vec.vocabulary import Key, Vocabulary

Sentences = Callable[[], Iterable[Sequence]]  # re-iterable corpus: a fresh pass per call


class _NewIds(dict):
    """unit -> provisional id; a unit not seen before gets the next id on lookup, so a whole
    group of sentences encodes in one `map` over a bound `__getitem__` (no Python per unit)."""

    def __missing__(self, unit: Key) -> int:
        self[unit] = new = len(self)
        return new


class _Provisional:
    """Provisional int ids for units during the single pass: token id arrays keep their ids;
    any other unit (a word, or an int in a list) gets the next id when first seen."""

    def __init__(self) -> None:
        self.index = _NewIds()  # unit -> provisional id (keyed units)
        self.arrays = False  # the corpus yields integer arrays: ids are the tokens' own
        self.decided = False  # whether the first unit told which
        self.max_id = -1

    def encode(self, sentences: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """The provisional ids of the sentences' units, concatenated (int32; negative token
        ids dropped), and how many each sentence kept (int64 [len(sentences)])."""
        if not self.decided:
            first = next((s for s in sentences if len(s)), None)
            if first is not None:
                self.decided = True
                self.arrays = isinstance(first, np.ndarray) and first.dtype.kind in "iu"
        if self.arrays:
            parts = [np.asarray(s, dtype=np.int64) for s in sentences]
            flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            kept = flat >= 0
            owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
            flat = flat[kept]
            if len(flat):
                self.max_id = max(self.max_id, int(flat.max()))
            return flat.astype(np.int32), np.bincount(owner[kept], minlength=len(parts))
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        units = itertools.chain.from_iterable(
            s.tolist() if isinstance(s, np.ndarray) else s for s in sentences
        )
        coded = np.fromiter(map(self.index.__getitem__, units), np.int32, int(lengths.sum()))
        return coded, lengths

    def keys(self) -> list:
        """The unit of each provisional id, by id."""
        return list(range(self.max_id + 1)) if self.arrays else list(self.index)


class _WriteBuffer:
    """The single pass's writer: collects sentences, encodes them a group at a time (one pass
    over many sentences costs far less than one per sentence), counts each provisional id
    (counts [max id seen + 1]) and writes the ids with their sentence numbers."""

    SIZE = 1 << 20  # units per group

    def __init__(self, units: _Provisional, ids: BinaryIO, sent: BinaryIO):
        self.units, self.ids, self.sent = units, ids, sent
        self.pending: list[Sequence] = []
        self.size = 0
        self.n_sentences = self.n_raw = 0  # read so far, whether kept or not
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, sentence: Sequence) -> None:
        self.pending.append(sentence)
        self.size += len(sentence)
        if self.size >= self.SIZE:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        coded, kept = self.units.encode(self.pending)
        first = self.n_sentences
        numbers = np.repeat(np.arange(first, first + len(kept), dtype=np.int32), kept)
        self.n_sentences += len(self.pending)
        self.n_raw += self.size
        found = np.bincount(coded)
        if len(found) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(found) - len(self.counts)))
        self.counts[: len(found)] += found
        self.ids.write(coded.tobytes())
        self.sent.write(numbers.tobytes())
        self.pending, self.size = [], 0


class EncodedCorpus:
    """The in-vocabulary positions of a corpus as int32 memmaps under `directory`.

    n_positions: positions kept (in vocabulary); n_raw: units read; n_sentences: sentences
    read; n_distinct: distinct units read; top_count: occurrences of the most frequent one.
    """

    FORMAT = 2
    REMAP_CHUNK = 1 << 22

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        meta = json.loads((self.directory / "encoded.json").read_text())
        self.n_positions: int = meta["positions"]
        self.n_raw: int = meta["raw_units"]
        self.n_sentences: int = meta["sentences"]
        self.n_distinct: int = meta["distinct"]
        self.top_count: int = meta["top_count"]

    @classmethod
    def build(
        cls,
        sentences: Iterable[Sequence],
        min_count: int,
        max_vocab: int | None,
        directory: Path,
        progress: bool = False,
    ) -> tuple[Vocabulary, EncodedCorpus]:
        """Count and encode `sentences` in one pass into `directory`: the vocabulary
        (`Vocabulary.build` rules) and the corpus with out-of-vocabulary units dropped."""
        sentences = tqdm(sentences, "word2vec corpus", unit="sentence", disable=not progress)
        directory.mkdir(parents=True, exist_ok=True)
        raw_ids, raw_sent = directory / "raw-ids.i32", directory / "raw-sent.i32"
        units = _Provisional()
        with open(raw_ids, "wb") as ids, open(raw_sent, "wb") as sent:
            buffer = _WriteBuffer(units, ids, sent)
            for sentence in sentences:
                buffer.add(sentence)
            buffer.flush()
        n_sentences, n_raw = buffer.n_sentences, buffer.n_raw
        keys = units.keys()
        counts = np.pad(buffer.counts, (0, len(keys) - len(buffer.counts)))
        seen = np.flatnonzero(counts >= min_count)
        vocab = Vocabulary.build(
            {keys[i]: int(counts[i]) for i in seen.tolist()}, min_count, max_vocab
        )
        table = np.full(len(keys), -1, dtype=np.int32)
        if len(vocab):
            provisional = vocab.keys if units.arrays else [units.index[k] for k in vocab.keys]
            table[np.asarray(provisional)] = np.arange(len(vocab), dtype=np.int32)
        positions = 0
        with open(directory / "ids.i32", "wb") as ids, open(directory / "sent.i32", "wb") as sent:
            for chunk, numbers in _memmap_chunks(raw_ids, raw_sent, cls.REMAP_CHUNK):
                coded = table[chunk]
                kept = coded >= 0
                ids.write(coded[kept].tobytes())
                sent.write(numbers[kept].tobytes())
                positions += int(kept.sum())
        raw_ids.unlink()
        raw_sent.unlink()
        meta = {
            "format": cls.FORMAT, "positions": positions, "raw_units": n_raw,
            "sentences": n_sentences, "distinct": int((counts > 0).sum()),
            "top_count": int(counts.max(initial=0)),
        }  # fmt: skip
        tmp = directory / "encoded.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, directory / "encoded.json")
        return vocab, cls(directory)

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


def _memmap_chunks(ids: Path, sent: Path, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, sentence numbers) of two parallel int32 files, `size` positions at a time."""
    if ids.stat().st_size == 0:
        return
    ids_map = np.memmap(ids, dtype=np.int32, mode="r")
    sent_map = np.memmap(sent, dtype=np.int32, mode="r")
    for start in range(0, len(ids_map), size):
        yield np.array(ids_map[start : start + size]), np.array(sent_map[start : start + size])


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


def gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a [V, ...] table and any index shape: `index_select` on the flat index
    is ~5x faster on CPU than advanced indexing, which goes through a generic kernel."""
    flat = table.index_select(0, index.reshape(-1))
    return flat.view(*index.shape, *table.shape[1:])


def subsample(
    ids: torch.Tensor, sent: torch.Tensor, keep: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop frequent units with their keep probabilities (before windowing, as word2vec.c).
    ids, sent [n] and keep [V] on the generator's device."""
    kept = torch.rand(len(ids), generator=gen, device=ids.device) < gather(keep, ids)
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
        mask &= gather(sent, pos) == gather(sent, centers)[:, None]
        groups.append(Windows(gather(ids, centers), gather(ids, pos), mask))
    return groups


def interleaved_batches(
    groups: list[Windows], negatives: list[torch.Tensor], size: int
) -> Iterator[tuple[Windows, torch.Tensor]]:
    """Batches of at most `size` centers with their negatives, taking the radius groups in
    turn (a batch of radius 1, one of radius 2, ..., then radius 1 again), so that a chunk's
    narrow and wide windows are mixed through its steps instead of each chunk ending on a run
    of the widest ones. negatives[i] [len(groups[i]), K]."""
    starts = [range(0, len(group), size) for group in groups]
    for row in itertools.zip_longest(*starts):
        for group, negs, start in zip(groups, negatives, row, strict=True):
            if start is not None:
                yield group.slice(start, start + size), negs[start : start + size]


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
        accept = torch.rand(shape, generator=gen, device=device) < gather(self.prob, column)
        return torch.where(accept, column, gather(self.alias, column))
