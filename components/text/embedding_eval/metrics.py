"""The metrics of stage "text.embedding_eval": word similarity and analogies.

Matching gensim's `KeyedVectors.evaluate_word_pairs` / `evaluate_word_analogies`
(dummy4unknown=False, case-insensitive when `lowercase`), which the tests use as reference:
  <name>_spearman, <name>_oov_rate  per similarity test set: Spearman rho between human scores
      and cosine similarities over the pairs the model can represent; the fraction skipped.
  analogy_accuracy, analogy_oov_rate, analogy_total  3CosAdd over the `restrict_vocab` most
      frequent words: answer argmax cos(x, b - a + c) (unit vectors), x not in {a, b, c};
      a question with any word outside that vocabulary is skipped.
Rates are fractions in [0, 1] (gensim reports percent). 3CosAdd itself is the vectors'
(`components.text.word2vec.vectors`), so evaluation and `Word2Vec.analogy` share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import stats

from components.stage import StageInputError
from components.text.embedding_eval.data import Analogy, WordPair
from components.text.word2vec.vectors import analogy_answers, unit_rows


class WordVectors(Protocol):
    """What evaluation needs from a model (`components.text.word2vec.vectors.Word2Vec` has it)."""

    def vector(self, word: str) -> np.ndarray | None:
        """Raw vector [D] of `word` (token-level models compose it); None if not representable."""
        ...

    def vocabulary(self, top_n: int | None = None) -> tuple[list[str], np.ndarray]:
        """Words a query may answer with, most frequent first (at most top_n), vectors [n, D]."""
        ...


@dataclass(frozen=True)
class SimilarityResult:
    spearman: float
    pearson: float
    pairs: int  # pairs scored: both words representable
    oov_pairs: int  # pairs skipped
    oov_rate: float  # oov_pairs / all pairs


@dataclass(frozen=True)
class SectionScore:
    section: str
    correct: int
    total: int  # questions answered (none of their words out of vocabulary)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0  # 0.0 when empty, as gensim


@dataclass(frozen=True)
class AnalogyResult:
    accuracy: float  # correct / total over all sections; 0.0 when nothing was answered
    correct: int
    total: int
    oov_rate: float  # questions skipped / all questions
    sections: list[SectionScore]  # in file order


def word_similarity(
    vectors: WordVectors, pairs: list[WordPair], lowercase: bool = True
) -> SimilarityResult:
    """Correlation of cosine(word1, word2) with the human scores over the pairs whose words
    `vectors.vector` can represent (any word, not only the most frequent); the rest are skipped.
    Raises StageInputError when fewer than 2 pairs remain."""
    gold, model = [], []
    for pair in pairs:
        words = (pair.word1, pair.word2)
        v1, v2 = (vectors.vector(w.lower() if lowercase else w) for w in words)
        if v1 is not None and v2 is not None:
            gold.append(pair.score)
            model.append(_cosine(v1, v2))
    if len(gold) < 2:
        raise StageInputError(
            f"only {len(gold)} of {len(pairs)} word pairs have both words in the model: "
            "a correlation needs at least 2"
        )
    oov = len(pairs) - len(gold)
    return SimilarityResult(
        spearman=float(stats.spearmanr(gold, model).statistic),
        pearson=float(stats.pearsonr(gold, model).statistic),
        pairs=len(gold),
        oov_pairs=oov,
        oov_rate=oov / len(pairs),
    )


def analogies(
    vectors: WordVectors,
    questions: list[Analogy],
    restrict_vocab: int = 30000,
    lowercase: bool = True,
    batch_size: int = 256,
) -> AnalogyResult:
    """3CosAdd accuracy over the `restrict_vocab` most frequent words, as gensim computes it
    (the answers are `vectors.analogy_answers`, the one 3CosAdd of Loom).

    With `lowercase`, case variants share a label: a question word takes the vector of its most
    frequent variant, and a candidate counts as its lowercased form (so every variant of a, b
    or c is excluded). Scores are batched: [batch, D] @ [D, vocab] per `batch_size` questions.
    (gensim looks at its 5 best non-input rows only, so it differs where more than 5 case
    variants of a, b, c outrank the answer.)
    """
    words, raw = vectors.vocabulary(restrict_vocab)
    labels = [w.lower() for w in words] if lowercase else list(words)
    label_id: dict[str, int] = {}
    for label in labels:
        label_id.setdefault(label, len(label_id))
    row_label = np.array([label_id[label] for label in labels], dtype=np.int64)  # [vocab]
    first_row = np.unique(row_label, return_index=True)[1]  # label id -> its most frequent row
    unit = unit_rows(raw)  # [vocab, D]

    answered: list[int] = []  # indices into questions
    ids: list[list[int]] = []  # label ids of a, b, c, expected
    for i, q in enumerate(questions):
        found = [label_id.get(w.lower() if lowercase else w, -1) for w in q.words]
        if -1 not in found:
            answered.append(i)
            ids.append(found)
    hit = np.zeros(len(questions), dtype=bool)
    for start in range(0, len(answered), batch_size):
        a, b, c, expected = np.array(ids[start : start + batch_size], dtype=np.int64).T  # [B]
        excluded = (row_label == a[:, None]) | (row_label == b[:, None]) | (row_label == c[:, None])
        best = analogy_answers(unit, first_row[a], first_row[b], first_row[c], excluded)  # [B]
        hit[answered[start : start + batch_size]] = (best >= 0) & (row_label[best] == expected)

    counts: dict[str, list[int]] = {}  # section -> [correct, answered], in file order
    for q in questions:
        counts.setdefault(q.section, [0, 0])
    for i in answered:
        counts[questions[i].section][0] += int(hit[i])
        counts[questions[i].section][1] += 1
    correct, total = int(hit.sum()), len(answered)
    return AnalogyResult(
        accuracy=correct / total if total else 0.0,
        correct=correct,
        total=total,
        oov_rate=(len(questions) - total) / max(len(questions), 1),
        sections=[SectionScore(name, *c) for name, c in counts.items()],
    )


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(u) * np.linalg.norm(v)
    return float(u @ v / norm) if norm > 0 else 0.0
