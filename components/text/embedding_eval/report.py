"""The report of stage "text.embedding_eval": nearest neighbours of probe words (a Markdown
table) and a 2-D PCA plot of the most frequent words."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from components.stage import StageInputError
from components.text.embedding_eval.metrics import WordVectors
from components.text.word2vec.vectors import nearest, unit_rows

Neighbours = list[tuple[str, list[tuple[str, float]]]]  # [(probe, [(word, cosine), ...]), ...]


def nearest_neighbours(
    vectors: WordVectors, probes: list[str], k: int, restrict_vocab: int | None = None
) -> Neighbours:
    """The k words most cosine-similar to each probe (the probe itself excluded), best first;
    an empty list for a probe the model cannot represent (`vectors.nearest` for each)."""
    words, raw = vectors.vocabulary(restrict_vocab)
    unit = unit_rows(raw)
    result: Neighbours = []
    for probe in probes:
        vec = vectors.vector(probe)
        result.append((probe, [] if vec is None else nearest(words, unit, vec, k, {probe})))
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
    x = unit_rows(raw)
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
