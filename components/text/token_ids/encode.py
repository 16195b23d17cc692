"""A corpus file encoded to token ids: parquet (doc_id, text) in, parquet (doc_id, ids) out,
batch by batch, so memory stays bounded by the batch size. Every batch's ids are checked
against the tokenizer's vocabulary before they are written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from components.inputs import open_parquet, parquet_batches
from components.stage import StageInputError
from components.text.bpe.tokenizer import BpeTokenizer

SCHEMA = pa.schema([("doc_id", pa.string()), ("ids", pa.list_(pa.int32()))])


@dataclass
class SplitCounts:
    docs: int = 0
    tokens: int = 0  # written, end-of-text ids included
    text_bytes: int = 0


def tokenize_file(
    tok: BpeTokenizer,
    src: Path,
    dst: Path,
    batch_size: int,
    eot: int | None,
    tokenizer_file: Path,
) -> SplitCounts:
    """Encode parquet `src` (doc_id, text) into parquet `dst` (doc_id, ids), batch by batch.
    Every batch's ids are checked against `tok.vocab_size` before they are written (an error
    names `tokenizer_file`, where `tok` came from)."""
    parquet = open_parquet(src)
    missing = {"doc_id", "text"} - set(parquet.schema_arrow.names)
    if missing:
        raise StageInputError(f"{src}: missing columns {sorted(missing)}")
    text_type = parquet.schema_arrow.field("text").type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise StageInputError(f"{src}: column 'text' is {text_type}, expected string")
    counts = SplitCounts()
    suffix = [] if eot is None else [eot]
    batches = parquet_batches(parquet, src, batch_size=batch_size, columns=["doc_id", "text"])
    total = math.ceil(parquet.metadata.num_rows / batch_size)
    with pq.ParquetWriter(dst, SCHEMA) as writer:
        for batch in tqdm(batches, total=total, desc=f"tokenize {src.name}", unit="batch"):
            texts = [text or "" for text in batch.column("text").to_pylist()]
            ids = [tok.encode_ordinary(text) + suffix for text in texts]
            _check_ids(ids, tok.vocab_size, tokenizer_file, src)
            doc_ids = batch.column("doc_id").cast(pa.string())
            arrays = [doc_ids, pa.array(ids, type=SCHEMA.field("ids").type)]
            writer.write_batch(pa.record_batch(arrays, schema=SCHEMA))
            counts.docs += len(ids)
            counts.tokens += sum(map(len, ids))
            counts.text_bytes += sum(len(text.encode("utf-8")) for text in texts)
    return counts


def _check_ids(ids: list[list[int]], vocab_size: int, tokenizer_file: Path, src: Path) -> None:
    """Every id in 0..vocab_size-1: a broken tokenizer must not write ids that downstream
    stages would index with (load checks the file; this is cheap insurance)."""
    rows = [row for row in ids if row]
    low = min(map(min, rows), default=0)
    high = max(map(max, rows), default=0)
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise StageInputError(
            f"{tokenizer_file}: encoding {src} gave token id {bad}, outside the tokenizer's "
            f"vocabulary 0..{vocab_size - 1}"
        )
