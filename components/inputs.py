"""Reading input files so that a bad one fails as a `StageInputError` naming it.

A stage's inputs come from other stages, other machines or a person's hands: a file can be
missing, cut short by a full disk or a killed copy, or simply something else. These helpers
turn the library's exception (pyarrow's "Parquet magic bytes not found", json's "Expecting
value") into one line that starts with the path, which `loom stage` prints as is.

    file = open_parquet(path)                      # schema and metadata are read here
    for batch in parquet_batches(file, path, columns=["text"], batch_size=1024): ...
    data = read_json(path)                         # a JSON document of any type
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.stage import StageInputError

# What pyarrow raises on unreadable data: ArrowInvalid, ArrowIOError (an OSError), ...
_ARROW_ERRORS = (pa.ArrowException, OSError)


def open_parquet(path: Path) -> pq.ParquetFile:
    """`pq.ParquetFile(path)`; `StageInputError` naming `path` if it is missing or unreadable."""
    if not Path(path).is_file():
        raise StageInputError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path)
    except _ARROW_ERRORS as err:
        raise StageInputError(
            f"{path}: not a readable Parquet file (truncated or corrupt?): {err}"
        ) from None


def parquet_batches(file: pq.ParquetFile, path: Path, **options: Any) -> Iterator[pa.RecordBatch]:
    """`file.iter_batches(**options)`, with an error while decoding a row group (a file whose
    footer is intact but whose data is not) as a `StageInputError` naming `path`."""
    try:
        yield from file.iter_batches(**options)
    except _ARROW_ERRORS as err:
        raise StageInputError(
            f"{path}: not a readable Parquet file (truncated or corrupt?): {err}"
        ) from None


def read_json(path: Path) -> Any:
    """The JSON document in `path`; `StageInputError` naming the file, and for bad JSON the
    line and column, if it is missing, not UTF-8 or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise StageInputError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise StageInputError(
            f"{path}: truncated or malformed JSON at line {err.lineno} column {err.colno}: "
            f"{err.msg}"
        ) from None


def json_line(line: str, path: Path, number: int) -> Any:
    """The JSON value on line `number` of a JSONL file `path`; `StageInputError` naming the
    file and line if it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise StageInputError(f"{path} line {number}: invalid JSON: {err}") from None


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages ("object", "array", ...)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
