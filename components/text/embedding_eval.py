"""Stage "text.embedding_eval": intrinsic evaluation of word vectors.

Input "model": a directory written by the word2vec stage (`Word2Vec.load`). Output "report":
a new directory with `neighbours.md` (nearest neighbours of the probe words) and
`projection.png` (2-D PCA of the most frequent words).

Metrics, matching gensim's `KeyedVectors.evaluate_word_pairs` / `evaluate_word_analogies`
(dummy4unknown=False, case-insensitive when `lowercase`), which the tests use as reference:
  <name>_spearman, <name>_oov_rate  per similarity test set: Spearman rho between human scores
      and cosine similarities over the pairs the model can represent; the fraction skipped.
  analogy_accuracy, analogy_oov_rate, analogy_total  3CosAdd over the `restrict_vocab` most
      frequent words: answer argmax cos(x, b - a + c) (unit vectors), x not in {a, b, c};
      a question with any word outside that vocabulary is skipped.
Rates are fractions in [0, 1] (gensim reports percent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from scipy import stats

from components.config import require
from components.stage import Stage, StageInputError, StageIO, StageResult
from components.text.eval_files import (
    Analogy,
    WordPair,
    read_analogies,
    read_word_pairs,
    resolve_path,
)

Neighbours = list[tuple[str, list[tuple[str, float]]]]  # [(probe, [(word, cosine), ...]), ...]


class WordVectors(Protocol):
    """What evaluation needs from a model (components.text.word2vec.Word2Vec provides it)."""

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
    """3CosAdd accuracy over the `restrict_vocab` most frequent words, as gensim computes it.

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
    unit = _unit(raw)  # [vocab, D]

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
        query = unit[first_row[b]] - unit[first_row[a]] + unit[first_row[c]]  # [B, D]
        scores = query @ unit.T  # [B, vocab]: cosine times a per-question factor > 0
        excluded = (row_label == a[:, None]) | (row_label == b[:, None]) | (row_label == c[:, None])
        scores[excluded] = -np.inf
        best = scores.argmax(axis=1)
        ok = (row_label[best] == expected) & np.isfinite(scores.max(axis=1))
        hit[answered[start : start + batch_size]] = ok

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


def nearest_neighbours(
    vectors: WordVectors, probes: list[str], k: int, restrict_vocab: int | None = None
) -> Neighbours:
    """The k words most cosine-similar to each probe (the probe itself excluded), best first;
    an empty list for a probe the model cannot represent."""
    words, raw = vectors.vocabulary(restrict_vocab)
    unit = _unit(raw)
    result: Neighbours = []
    for probe in probes:
        vec = vectors.vector(probe)
        if vec is None:
            result.append((probe, []))
            continue
        sims = unit @ _unit(np.asarray(vec)[None, :])[0]  # [vocab]
        order = [i for i in np.argsort(-sims, kind="stable")[: k + 1] if words[i] != probe]
        result.append((probe, [(words[i], float(sims[i])) for i in order[:k]]))
    return result


def neighbours_table(rows: Neighbours, fmt: Literal["markdown", "tsv"] = "markdown") -> str:
    """Markdown: one row per probe, "word (cosine)" cells. TSV: probe, rank, word, cosine."""
    if fmt == "tsv":
        lines = ["probe\trank\tword\tcosine"]
        for probe, found in rows:
            lines += [f"{probe}\t{r}\t{w}\t{s:.4f}" for r, (w, s) in enumerate(found, start=1)]
        return "\n".join(lines) + "\n"
    lines = ["| probe | nearest neighbours (cosine) |", "| --- | --- |"]
    for probe, found in rows:
        cells = ", ".join(f"{_md(w)} ({s:.3f})" for w, s in found) or "*not in the model*"
        lines.append(f"| {_md(probe)} | {cells} |")
    return "\n".join(lines) + "\n"


def pca_plot(vectors: WordVectors, top_n: int, path: Path) -> Path:
    """Scatter of the `top_n` most frequent words on the first two principal components of
    their unit vectors (unit, so that frequency-driven vector norms do not dominate)."""
    # Imported here: only this function needs matplotlib. The Agg canvas renders without a
    # display and without switching the process-wide pyplot backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    words, raw = vectors.vocabulary(top_n)
    if len(words) < 2:
        raise StageInputError(f"PCA needs at least 2 words; the model has {len(words)}")
    x = _unit(raw)
    x -= x.mean(axis=0)
    _, sing, vt = np.linalg.svd(x, full_matrices=False)
    xy = np.zeros((len(words), 2))
    xy[:, : min(2, len(vt))] = x @ vt[:2].T  # [n, 2] (one column when D == 1)
    explained = np.zeros(2)
    explained[: min(2, len(sing))] = sing[:2] ** 2 / max(float((sing**2).sum()), 1e-30)

    fig = Figure(figsize=(12, 12))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    ax = fig.add_subplot()
    ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5)
    for word, (px, py) in zip(words, xy, strict=True):
        ax.annotate(word, (px, py), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"PC1 ({explained[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.1%} of variance)")
    ax.set_title(f"PCA of the {len(words)} most frequent words")
    fig.savefig(path, format="png", dpi=100)
    return path


def _md(text: str) -> str:
    return text.replace("|", "\\|")  # a "|" inside a token would split the table cell


def _unit(m: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32 [n, D]); zero rows stay zero."""
    m = np.asarray(m, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1)


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(u) * np.linalg.norm(v)
    return float(u @ v / norm) if norm > 0 else 0.0


GENSIM_DATA = "pkg:gensim/test/test_data/"
METRIC_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass
class EmbeddingEvalConfig:
    """similarity: test-set name -> path (`pkg:<package>/<file>` or relative), one metric
        prefix per name; {} skips word similarity.
    analogy: questions-words.txt-format path; null skips analogies.
    restrict_vocab: analogy candidates and answers: the most frequent words (also neighbours).
    plot_words: most frequent words in the PCA plot.
    probes/neighbours: words whose `neighbours` nearest words the report lists.
    lowercase: lowercase test-set words (and, for analogies, vocabulary words) before lookup."""

    similarity: dict[str, str] = field(
        default_factory=lambda: {
            "wordsim353": GENSIM_DATA + "wordsim353.tsv",
            "simlex999": GENSIM_DATA + "simlex999.txt",
        }
    )
    analogy: str | None = GENSIM_DATA + "questions-words.txt"
    restrict_vocab: int = 30000
    plot_words: int = 200
    probes: list[str] = field(
        default_factory=lambda: ["file", "list", "error", "string", "function", "module"]
    )
    neighbours: int = 8
    lowercase: bool = True

    def __post_init__(self) -> None:
        for name in self.similarity:
            require(bool(METRIC_NAME.fullmatch(name)), "similarity", name, "names of [A-Za-z0-9_]")
        require(self.restrict_vocab >= 1, "restrict_vocab", self.restrict_vocab, "an int >= 1")
        require(self.plot_words >= 2, "plot_words", self.plot_words, "an int >= 2")
        require(self.neighbours >= 1, "neighbours", self.neighbours, "an int >= 1")


def _run(config: EmbeddingEvalConfig, io: StageIO) -> StageResult:
    from components.text.word2vec import Word2Vec  # here, so that this module imports alone

    # Read every test set before loading the model: a bad path fails fast.
    pair_sets = {
        name: (spec, read_word_pairs(resolve_path(spec)))
        for name, spec in config.similarity.items()
    }
    questions = read_analogies(resolve_path(config.analogy)) if config.analogy else None
    model: WordVectors = Word2Vec.load(io.inputs["model"])

    metrics: dict[str, float] = {}
    for name, (spec, pairs) in pair_sets.items():
        try:
            sim = word_similarity(model, pairs, config.lowercase)
        except StageInputError as err:
            raise StageInputError(f"{spec}: {err}") from None
        metrics |= {f"{name}_spearman": sim.spearman, f"{name}_oov_rate": sim.oov_rate}
    if questions is not None:
        ana = analogies(model, questions, config.restrict_vocab, config.lowercase)
        metrics |= {
            "analogy_accuracy": ana.accuracy,
            "analogy_oov_rate": ana.oov_rate,
            "analogy_total": float(ana.total),
        }

    out = io.outputs["report"]
    out.mkdir(parents=True)
    rows = nearest_neighbours(model, config.probes, config.neighbours, config.restrict_vocab)
    table = out / "neighbours.md"
    table.write_text(neighbours_table(rows, "markdown"), encoding="utf-8")
    plot = pca_plot(model, config.plot_words, out / "projection.png")
    return StageResult(metrics=metrics, artifacts=[plot, table])


STAGE = Stage(
    name="text.embedding_eval",
    version="1",
    config=EmbeddingEvalConfig,
    inputs=("model",),
    outputs=("report",),
    run=_run,
    key_metrics=("wordsim353_spearman", "simlex999_spearman", "analogy_accuracy"),
)
