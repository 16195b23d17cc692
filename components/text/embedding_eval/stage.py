"""Stage "text.embedding_eval": intrinsic evaluation of word vectors.

Input "model": a directory written by the word2vec stage (`Word2Vec.load`). Output "report":
a new directory with `neighbours.md` (nearest neighbours of the probe words) and
`projection.png` (2-D PCA of the most frequent words). Metrics: see `metrics`.

What this stage imports of word2vec is `vectors` alone (the trained object, its queries and
loader), not the trainer or its kernels: retraining code changes no evaluation.
"""

from __future__ import annotations

from components.stage import Output, Stage, StageInputError, StageIO, StageResult
from components.text.embedding_eval.config import EmbeddingEvalConfig
from components.text.embedding_eval.data import read_analogies, read_word_pairs, resolve_path
from components.text.embedding_eval.metrics import WordVectors, analogies, word_similarity
from components.text.embedding_eval.report import nearest_neighbours, neighbours_table, pca_plot


def _run(config: EmbeddingEvalConfig, io: StageIO) -> StageResult:
    # The loader of the vectors this stage evaluates, imported when the stage runs so that a
    # test can stand another module in for it (sys.modules).
    from components.text.word2vec.vectors import Word2Vec

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
    return StageResult(metrics=metrics, artifacts=[Output("report", p.name) for p in (plot, table)])


STAGE = Stage(
    name="text.embedding_eval",
    version="1",
    config=EmbeddingEvalConfig,
    inputs=("model",),
    outputs=("report",),
    run=_run,
    key_metrics=("wordsim353_spearman", "simlex999_spearman", "analogy_accuracy"),
)
