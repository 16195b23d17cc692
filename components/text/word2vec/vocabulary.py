"""A word2vec vocabulary: the units kept, most frequent first, with their corpus counts, and
the two distributions training draws from them (subsampling, negatives)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

Key = Hashable  # a word (str) or a token id (int)


@dataclass(frozen=True)
class Vocabulary:
    """keys: units kept, most frequent first (ties broken by key); counts: int64 [V]."""

    keys: list
    counts: np.ndarray

    @classmethod
    def build(cls, counts: Mapping, min_count: int, max_vocab: int | None) -> Vocabulary:
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
