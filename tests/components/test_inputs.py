"""components.inputs: a damaged Parquet or JSON input fails as a StageInputError naming it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.inputs import json_type, open_parquet, parquet_batches, read_json
from components.stage import StageInputError
from tests.components.bad_parquet import corrupt_copy, truncated_copy


@pytest.fixture
def parquet(tmp_path) -> Path:
    texts = [f"document {i} " * 20 for i in range(200)]
    table = pa.table({"doc_id": [str(i) for i in range(200)], "text": texts})
    pq.write_table(table, tmp_path / "good.parquet", row_group_size=50)
    return tmp_path / "good.parquet"


def test_a_good_file_reads_whole(parquet):
    file = open_parquet(parquet)
    assert sum(len(b) for b in parquet_batches(file, parquet, batch_size=30)) == 200


def test_truncated_parquet_is_named(parquet, tmp_path):
    bad = truncated_copy(parquet, tmp_path / "bad.parquet")
    with pytest.raises(pa.ArrowInvalid, match="magic bytes"):  # what it would be otherwise
        pq.ParquetFile(bad)
    with pytest.raises(StageInputError) as err:
        open_parquet(bad)
    assert str(err.value).startswith(f"{bad}: not a readable Parquet file (truncated or corrupt?)")
    assert "magic bytes" in str(err.value)


def test_corrupt_row_group_is_named_when_read(parquet, tmp_path):
    bad = corrupt_copy(parquet, tmp_path / "bad.parquet")
    file = open_parquet(bad)  # the footer is intact
    batches = parquet_batches(file, bad, batch_size=50)
    assert [len(next(batches)) for _ in range(3)] == [50, 50, 50]
    with pytest.raises(StageInputError, match="not a readable Parquet file") as err:
        next(batches)
    assert str(err.value).startswith(f"{bad}: ")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(StageInputError, match="gone.parquet: file not found"):
        open_parquet(tmp_path / "gone.parquet")
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(StageInputError, match="empty.parquet: not a readable Parquet file"):
        open_parquet(tmp_path / "empty.parquet")


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"a": [1, 2', "truncated or malformed JSON at line 1 column 12"),
        (b'{"a": 1}\n{"b": 2}', "truncated or malformed JSON at line 2 column 1: Extra data"),
        (b'{"a": "\xff"}', "not UTF-8 text (byte offset 7)"),
    ],
)
def test_bad_json_is_named(tmp_path, content, problem):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(StageInputError) as err:
        read_json(path)
    assert str(err.value).startswith(f"{path}: {problem}")


def test_json_reads_and_names_types(tmp_path):
    (tmp_path / "x.json").write_text('{"a": [1, 2.5, null]}')
    assert read_json(tmp_path / "x.json") == {"a": [1, 2.5, None]}
    with pytest.raises(StageInputError, match="y.json: file not found"):
        read_json(tmp_path / "y.json")
    assert [json_type(v) for v in ({}, [], "", True, None, 1, 2.5)] == [
        "object", "array", "string", "boolean", "null", "number", "number",
    ]  # fmt: skip
