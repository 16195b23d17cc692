"""The training text of the word2vec stage, streamed from Parquet one sentence (document) at a
time: token-id arrays (column `ids`, from stage "text.tokenize") or the words of column `text`
(`unit: word`). Damaged files, columns of another type and token ids outside the tokenizer's
vocabulary are a `StageInputError` naming the file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.inputs import open_parquet, parquet_batches
from components.stage import StageInputError

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
