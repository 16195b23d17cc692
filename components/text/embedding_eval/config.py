"""The embedding_eval stage's config: test sets, vocabulary cut-off, what the report shows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from components.config import require

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
