"""Tiny seeded corpora with planted structure for word2vec tests, and a small fast config.
Every number trained on them is reproducible on CPU."""

from __future__ import annotations

from pydoc_data.topics import topics

import numpy as np

from components.text.word2vec.config import Word2VecConfig
from components.text.word2vec.vectors import Word2Vec

DOCS = [topics[name] for name in sorted(topics)][:30]


def small_config(**changes) -> Word2VecConfig:
    base = dict(
        unit="word", dim=16, window=3, negative=5, sample=0.0, min_count=1, epochs=5,
        batch_size=64, workers=1, seed=1, device="cpu", progress=False,
    )  # fmt: skip
    return Word2VecConfig(**(base | changes))


def unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# ---- planted structure ----------------------------------------------------------------------


def two_clusters(seed: int = 0, n: int = 400) -> tuple[list[list[str]], list[str], list[str]]:
    """`n` sentences of 8 words, each sentence from one of two 8-word clusters only."""
    rng = np.random.default_rng(seed)
    a, b = [f"a{i}" for i in range(8)], [f"b{i}" for i in range(8)]
    sentences = [[str(w) for w in rng.choice((a, b)[s % 2], size=8)] for s in range(n)]
    return sentences, a, b


def assert_clusters_separate(model: Word2Vec, a: list[str], b: list[str]) -> None:
    va, vb = (unit_rows(np.stack([model.vector(w) for w in ws])) for ws in (a, b))
    off_diagonal = ~np.eye(len(a), dtype=bool)
    within = ((va @ va.T)[off_diagonal].mean() + (vb @ vb.T)[off_diagonal].mean()) / 2
    across = (va @ vb.T).mean()
    assert within > 0.8 and across < 0.5 and within - across > 0.5, (within, across)
    for cluster in (a, b):
        for word in cluster:
            neighbours = [w for w, _ in model.most_similar(word, k=len(cluster) - 1)]
            assert sorted(neighbours) == sorted(set(cluster) - {word}), (word, neighbours)


def countries_and_capitals(seed: int, pairs: int = 5) -> list[list[str]]:
    """country{i} and capital{i} share topic words t{i}x*; each role has its own marker words.
    So capital{i} - country{i} is one offset (capital markers - country markers) for every i."""
    rng = np.random.default_rng(seed)
    markers = {"country": ["nation", "flag", "border", "anthem"],
               "capital": ["city", "mayor", "street", "tram"]}  # fmt: skip
    sentences = []
    for _ in range(60):
        for i in range(pairs):
            topic = [f"t{i}x{j}" for j in range(4)]
            for role, words in markers.items():
                sentence = [f"{role}{i}", *rng.choice(words, 3), *rng.choice(topic, 3)]
                sentences.append([str(w) for w in rng.permutation(sentence)])
    return sentences
