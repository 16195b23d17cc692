"""Stage "text.word2vec": train word2vec on the token stream (or on words) of a corpus.

Inputs: "tokens" (parquet `ids` per document, from stage "text.tokenize"), "tokenizer" (its
BPE tokenizer) and "corpus" (parquet `text`, used when `unit: word`). Only the train split
is read; each document is one sentence (windows never cross documents).

Output "model": `Word2Vec.save` layout plus `vectors.bin` (word2vec.c binary) and
`vectors.safetensors` exports. Checkpoints go to the runner's work directory after every
epoch, so a killed run resumes at the last finished epoch (and returns the whole loss curve).
Inputs are checked before they are trusted: a damaged Parquet file, or token ids outside the
tokenizer's vocabulary, are a `StageInputError` naming the file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.inputs import open_parquet, parquet_batches
from components.stage import Dataset, Stage, StageInputError, StageIO, StageResult
from components.text.bpe import BpeTokenizer
from components.text.word2vec import EmptyCorpusError, Word2Vec, Word2VecConfig, pick_device

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")  # letters, with an inner apostrophe


def words(text: str, lowercase: bool = True) -> list[str]:
    """The words of `text` for `unit: word` training: runs of letters ("don't" is one word)."""
    return WORD.findall(text.lower() if lowercase else text)


def _is_id_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


_COLUMN_TYPES = {
    "ids": _is_id_list,
    "text": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
}


class ParquetSentences:
    """A re-iterable stream of one parquet column, one sentence per row: token-id arrays
    (column `ids`) or word lists (column `text`), read in batches of `batch_rows`. With
    `vocab_size`, every batch of ids is checked to lie in 0..vocab_size-1 (the tokenizer's)."""

    def __init__(
        self,
        path: Path,
        column: str,
        lowercase: bool = True,
        batch_rows: int = 1024,
        vocab_size: int | None = None,
    ):
        self.path, self.column, self.lowercase = path, column, lowercase
        self.batch_rows, self.vocab_size = batch_rows, vocab_size
        schema = open_parquet(path).schema_arrow
        if column not in schema.names:
            raise StageInputError(f"{path}: no column {column!r} (columns: {schema.names})")
        found = schema.field(column).type
        if not _COLUMN_TYPES[column](found):
            expected = "list<int32>" if column == "ids" else "string"
            raise StageInputError(f"{path}: column {column!r} is {found}, expected {expected}")

    def __call__(self) -> Iterator:
        reader = open_parquet(self.path)
        options = {"batch_size": self.batch_rows, "columns": [self.column]}
        for batch in parquet_batches(reader, self.path, **options):
            col = batch.column(0)
            if self.column == "ids":
                values = col.values.to_numpy(zero_copy_only=False)
                self._check_ids(values)
                offsets = col.offsets.to_numpy()
                yield from np.split(values, offsets[1:-1] - offsets[0])
            else:
                yield from (words(t or "", self.lowercase) for t in col.to_pylist())

    def _check_ids(self, values: np.ndarray) -> None:
        # the trainer indexes its tables with these ids: a stray one must stop here
        if self.vocab_size is None or not len(values):
            return
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= self.vocab_size:
            raise StageInputError(
                f"{self.path}: token id {low if low < 0 else high} is outside the tokenizer's "
                f"vocabulary 0..{self.vocab_size - 1} (tokens made with another tokenizer?)"
            )


def _run(config: Word2VecConfig, io: StageIO) -> StageResult:
    pick_device(config.device, key="word2vec.device")  # before any input is read
    if config.unit == "token":
        source, column = io.inputs["tokens"] / "train.parquet", "ids"
        tokenizer = BpeTokenizer.load(io.inputs["tokenizer"])
    else:
        source, column, tokenizer = io.inputs["corpus"] / "train.parquet", "text", None
    if not source.is_file():
        raise StageInputError(f"{source}: training data not found")
    vocab_size = tokenizer.vocab_size if tokenizer is not None else None
    sentences = ParquetSentences(source, column, config.lowercase, vocab_size=vocab_size)

    curve: list[tuple[int, float]] = []
    started = time.perf_counter()
    try:
        model = Word2Vec.train(
            sentences, config, tokenizer=tokenizer, work_dir=io.work,
            on_metrics=lambda step, m: curve.append((step, m["loss"])),
        )  # fmt: skip
    except EmptyCorpusError as err:
        raise StageInputError(f"{source}: {err}") from None
    seconds = time.perf_counter() - started

    out = io.outputs["model"]
    model.save(out)
    model.export_word2vec(out / "vectors.bin", binary=True)
    model.export_safetensors(out / "vectors.safetensors")
    words_trained = config.epochs * int(model.vocab.total)
    metrics = {
        "vocab_size": float(len(model.keys)),
        "train_units": float(model.vocab.total),
        "final_loss": model.history[-1],
        "train_seconds": seconds,
        "train_units_per_second": words_trained / max(seconds, 1e-9),
    }
    return StageResult(
        metrics=metrics,
        curves={"loss": curve},
        datasets=[Dataset("train", source, "train"), Dataset("model", out, "output")],
    )


STAGE = Stage(
    name="text.word2vec",
    version="1",
    config=Word2VecConfig,
    inputs=("tokens", "tokenizer", "corpus"),
    outputs=("model",),
    run=_run,
    key_metrics=("vocab_size", "final_loss"),
)
