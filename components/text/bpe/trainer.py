"""BPE merge learning: `train_bpe(texts, vocab_size)` -> `BpeTokenizer`.

    tok = train_bpe(texts, vocab_size=1024, special_tokens=["<|endoftext|>"])
    tok.train_stats.merge_counts  # the pair frequency at each merge

Texts are streamed once into pre-token frequencies (special tokens cut out, so no merge spans
them); `MergeTrainer` then merges the most frequent adjacent pair, step by step, updating only
the words that hold it. A trained tokenizer has ids 0..255 = raw bytes, then one id per merge
in merge order, then the special tokens.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from tqdm import tqdm

from components.text.bpe.pretokenizer import GPT2_PATTERN, PreTokenizer, special_splitter
from components.text.bpe.tokenizer import BpeTokenizer, Pair


@dataclass
class TrainStats:
    """What `train_bpe` saw; set on the trained tokenizer (`train_stats`), not saved."""

    words: int  # pre-tokens in the training text
    unique_words: int
    merge_counts: list[int] = field(default_factory=list)  # pair frequency at each merge
    seconds: float = 0.0


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    progress: bool = False,
) -> BpeTokenizer:
    """Learn `vocab_size - 256 - len(special_tokens)` merges from `texts` (streamed once).

    Each step merges the most frequent pair; ties go to the lexicographically smallest
    (left bytes, right bytes). Training stops early once no pair occurs twice, so the
    vocab can come out smaller than asked (see `BpeTokenizer.vocab_size`).
    """
    num_merges = vocab_size - 256 - len(special_tokens)
    if num_merges < 0:
        raise ValueError(
            f"vocab_size {vocab_size} < 256 byte tokens + {len(special_tokens)} special tokens"
        )
    if len(set(special_tokens)) != len(special_tokens) or "" in special_tokens:
        raise ValueError(f"special tokens must be distinct and non-empty: {special_tokens}")
    start = time.perf_counter()
    words = _count_words(texts, special_tokens, PreTokenizer(GPT2_PATTERN))
    trainer = MergeTrainer({w.encode("utf-8"): n for w, n in words.items()})
    stats = TrainStats(words=sum(words.values()), unique_words=len(words))
    del words
    for _ in tqdm(range(num_merges), desc="bpe merges", disable=not progress):
        step = trainer.step()
        if step is None:
            break
        stats.merge_counts.append(step[1])
    vocab = dict(enumerate(trainer.token_bytes))
    specials = {s: len(vocab) + i for i, s in enumerate(special_tokens)}
    tok = BpeTokenizer(vocab, trainer.merges, specials)
    stats.seconds = time.perf_counter() - start
    tok.train_stats = stats
    return tok


class MergeTrainer:
    """Incremental BPE merge learning over a word-frequency table.

    Holds each distinct word as a list of token ids with its frequency, the count of every
    adjacent pair, an index pair -> words that (may) contain it, and a lazy max-heap of
    (-count, left bytes, right bytes). A merge rewrites only the words holding the pair and
    adjusts their pair counts; counts of untouched pairs only ever fall, so a heap entry whose
    count is stale is an upper bound and is re-pushed with the true count when it surfaces.
    `train_bpe` drives it; tests compare its counts with a full recount.
    """

    def __init__(self, word_counts: Mapping[bytes, int]):
        self.words = [list(w) for w in word_counts]
        self.freqs = list(word_counts.values())
        self.token_bytes = [bytes([b]) for b in range(256)]  # id -> bytes, grows per merge
        self.merges: list[Pair] = []
        self.pair_counts: dict[Pair, int] = {}
        self.pair_words: dict[Pair, set[int]] = {}
        counts, where = self.pair_counts, self.pair_words
        for w, (word, freq) in enumerate(zip(self.words, self.freqs, strict=True)):
            for pair in pairwise(word):
                counts[pair] = counts.get(pair, 0) + freq
                where.setdefault(pair, set()).add(w)
        self._known = set(self.token_bytes)
        self._heap = [self._entry(pair, n) for pair, n in counts.items()]
        heapq.heapify(self._heap)

    def _entry(self, pair: Pair, count: int) -> tuple[int, bytes, bytes, Pair]:
        return (-count, self.token_bytes[pair[0]], self.token_bytes[pair[1]], pair)

    def step(self) -> tuple[Pair, int] | None:
        """Merge the most frequent pair into a new token; return (pair, its count), or None
        once no pair occurs twice."""
        heap, counts = self._heap, self.pair_counts
        while heap:
            negative, left, right, pair = heapq.heappop(heap)
            count = counts.get(pair, 0)
            if count != -negative:  # stale: counts only fall, so re-queue the true count
                if count > 0:
                    heapq.heappush(heap, self._entry(pair, count))
                continue
            if count < 2:
                heapq.heappush(heap, (negative, left, right, pair))
                return None
            if left + right in self._known:
                # Another pair already spelled these bytes ("ab"+"c" vs "a"+"bc"). Not seen in
                # practice, but a second id for the same bytes could not be written to
                # vocab.json or a tiktoken file, so such a pair is dropped for good.
                continue
            self._merge(pair)
            return pair, count
        return None

    def _merge(self, pair: Pair) -> None:
        a, b = pair
        new = len(self.token_bytes)
        self.token_bytes.append(self.token_bytes[a] + self.token_bytes[b])
        self._known.add(self.token_bytes[new])
        self.merges.append(pair)
        counts, where, words, freqs = self.pair_counts, self.pair_words, self.words, self.freqs
        created: set[Pair] = set()
        for w in where.pop(pair):
            word = words[w]
            merged = _merge_pair(word, pair, new)
            if len(merged) == len(word):  # the index is a superset: the pair left this word
                continue
            freq = freqs[w]
            for p in pairwise(word):
                counts[p] -= freq
            for p in pairwise(merged):
                counts[p] = counts.get(p, 0) + freq
                if new in p:  # other pairs of `merged` were in `word`: already indexed
                    created.add(p)
                    where.setdefault(p, set()).add(w)
            words[w] = merged
        del counts[pair]
        for p in created:
            heapq.heappush(self._heap, self._entry(p, counts[p]))

    def recount(self) -> dict[Pair, int]:
        """Pair counts from scratch (what the incremental counts must equal)."""
        counts: Counter[Pair] = Counter()
        for word, freq in zip(self.words, self.freqs, strict=True):
            for pair in pairwise(word):
                counts[pair] += freq
        return dict(counts)


def _merge_pair(ids: list[int], pair: Pair, new: int) -> list[int]:
    """Replace each non-overlapping occurrence of `pair`, left to right, by `new`.

    >>> _merge_pair([97, 97, 97, 98], (97, 97), 256)
    [256, 97, 98]
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _count_words(
    texts: Iterable[str], special_tokens: Sequence[str], pretokenizer: PreTokenizer
) -> Counter[str]:
    """Pre-token frequencies; special tokens are cut out so no merge ever spans them.

    >>> _count_words(["a cat<|endoftext|>a cat"], ["<|endoftext|>"], PreTokenizer(GPT2_PATTERN))
    Counter({'a': 2, ' cat': 2})
    """
    counts: Counter[str] = Counter()
    splitter = special_splitter(tuple(special_tokens)) if special_tokens else None
    for text in texts:
        for chunk in splitter.split(text)[::2] if splitter else (text,):
            counts.update(pretokenizer.findall(chunk))
    return counts
