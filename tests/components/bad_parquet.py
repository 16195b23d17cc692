"""Damaged copies of real Parquet files, for the tests of every stage that reads one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq


def truncated_copy(src: Path, dst: Path, fraction: float = 0.6) -> Path:
    """The first `fraction` of the bytes of `src` (the footer is lost, as by a killed copy)."""
    raw = Path(src).read_bytes()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(raw[: int(len(raw) * fraction)])
    return Path(dst)


def corrupt_copy(src: Path, dst: Path, column: int = -1) -> Path:
    """`src` with the data of one column chunk of its last row group overwritten: the footer
    still reads, so opening succeeds and reading that row group fails."""
    meta = pq.ParquetFile(src).metadata
    group = meta.row_group(meta.num_row_groups - 1)
    chunk = group.column(column % group.num_columns)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(start)
        f.write(b"\xab" * chunk.total_compressed_size)
    return Path(dst)
