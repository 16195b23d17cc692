"""The BPE tokenizer as a served model: `load(dir).predict(texts)` -> token ids per text.

`STAGE.models` names `load` as the loader of the "tokenizer" output, so the runner logs that
directory as an MLflow model; `mlflow.pyfunc.load_model("models:/text.bpe.small/latest")`
then answers with this object's `predict`. Nothing here knows MLflow: the object is the same
in a notebook, a test or a model server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from components.text.bpe.tokenizer import BpeTokenizer


class TokenizerModel:
    """`predict(["some text", ...])` -> [[ids], ...]: `BpeTokenizer.encode` of each text,
    special tokens written in a text (e.g. "<|endoftext|>") mapped to their ids, as the
    `tokenize` stage encodes documents."""

    def __init__(self, tokenizer: BpeTokenizer):
        self.tokenizer = tokenizer

    def predict(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer.encode(text) for text in _strings(texts)]


def load(directory: str | Path) -> TokenizerModel:
    """The tokenizer saved in `directory` (a loom-bpe artifact, `BpeTokenizer.load`)."""
    return TokenizerModel(BpeTokenizer.load(directory))


def _strings(texts: Sequence[str]) -> Sequence[str]:
    """`texts` when it is a sequence of strings; a bare string (which would encode character
    by character) or a non-string item is a TypeError naming it."""
    if isinstance(texts, str | bytes):
        raise TypeError(f"predict expects a list of strings, got one {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"predict expects a list of strings: item {i} is {text!r}")
    return texts
