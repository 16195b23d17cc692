"""word2vec vectors as a served model: `load(dir).predict(words)` -> one vector per word.

`STAGE.models` names `load` as the loader of the "model" output, so the runner logs that
directory as an MLflow model; `mlflow.pyfunc.load_model("models:/text.word2vec.small/latest")`
then answers with this object's `predict`. Nothing here knows MLflow.

A word is answered as `Word2Vec.vector` answers it: its row for word units; for token units
the mean of its tokens' vectors (the word as the tokenizer splits " word"), or a token key
("Ġthe"). A word that cannot be represented is an `OutOfVocabularyError` naming every such
word in the batch, not a row of NaNs: a NaN would pass silently into whatever sums or ranks
the vectors next, while the error says which inputs to drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.text.word2vec.vectors import Word2Vec

MAX_NAMED = 20  # out-of-vocabulary words an error message lists


class OutOfVocabularyError(KeyError):
    """Words of a `predict` batch that the model cannot represent (`missing`, in order)."""

    def __init__(self, missing: list[str], batch: int):
        super().__init__(missing)
        self.missing, self.batch = missing, batch

    def __str__(self) -> str:
        shown = ", ".join(map(repr, self.missing[:MAX_NAMED]))
        more = f" and {len(self.missing) - MAX_NAMED} more" if len(self.missing) > MAX_NAMED else ""
        return (
            f"{len(self.missing)} of {self.batch} words are out of the vocabulary and cannot be "
            f"composed from known tokens: {shown}{more}"
        )


class VectorsModel:
    """`predict(["file", "list"])` -> float32 [n, D], row i the vector of word i
    (`Word2Vec.vector`); any word without one fails the batch (`OutOfVocabularyError`)."""

    def __init__(self, model: Word2Vec):
        self.model = model

    def predict(self, words: Sequence[str]) -> np.ndarray:
        if isinstance(words, str | bytes):
            raise TypeError(f"predict expects a list of words, got one {type(words).__name__}")
        vectors, missing = [], []
        for i, word in enumerate(words):
            if not isinstance(word, str):
                raise TypeError(f"predict expects a list of words: item {i} is {word!r}")
            vector = self.model.vector(word)
            if vector is None:
                missing.append(word)
            else:
                vectors.append(vector)
        if missing:
            raise OutOfVocabularyError(missing, len(words))
        dim = self.model.vectors.shape[1]
        return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)


def load(directory: str | Path) -> VectorsModel:
    """The model saved in `directory` (a loom-word2vec artifact, `Word2Vec.load`)."""
    return VectorsModel(Word2Vec.load(directory))
