"""Stage "text.tokenize": encode a corpus with a trained BPE tokenizer.

Inputs: "corpus", a directory with `train.parquet` and (optionally) `val.parquet`, columns
`doc_id`/`text`; "tokenizer", a directory written by stage "text.bpe" (`BpeTokenizer.load`).

Output "tokens": a new directory with `train.parquet` (and `val.parquet` when the corpus has
one), one row per document: `doc_id` (string), `ids` (list<int32>). Document text is encoded
as ordinary text (a literal "<|endoftext|>" inside a document stays text), then the
`<|endoftext|>` id is appended when `append_eot` is set and the tokenizer has that token.
Files are written batch by batch, so memory stays bounded by `batch_size` documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from components.config import require
from components.inputs import open_parquet, parquet_batches
from components.stage import Dataset, Stage, StageInputError, StageIO, StageResult
from components.text.bpe import ENDOFTEXT, FILENAME, BpeTokenizer

SCHEMA = pa.schema([("doc_id", pa.string()), ("ids", pa.list_(pa.int32()))])
SPLITS = ("train", "val")


@dataclass
class TokenizeConfig:
    """append_eot: end every document with the "<|endoftext|>" id (if the tokenizer has it).
    batch_size: documents per read/encode/write batch (and per parquet row group)."""

    append_eot: bool = True
    batch_size: int = 1024

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")


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


def _run(config: TokenizeConfig, io: StageIO) -> StageResult:
    corpus, out = io.inputs["corpus"], io.outputs["tokens"]
    if not (corpus / "train.parquet").is_file():
        raise StageInputError(f"{corpus / 'train.parquet'}: corpus file not found")
    tokenizer_file = io.inputs["tokenizer"] / FILENAME
    tok = BpeTokenizer.load(io.inputs["tokenizer"])
    eot = tok.special_tokens.get(ENDOFTEXT) if config.append_eot else None

    out.mkdir(parents=True)
    metrics = {"vocab_size": float(tok.vocab_size)}
    metrics |= {f"num_{unit}_{split}": 0.0 for split in SPLITS for unit in ("docs", "tokens")}
    datasets: list[Dataset] = []
    text_bytes = ordinary_tokens = 0
    for split in SPLITS:
        src, dst = corpus / f"{split}.parquet", out / f"{split}.parquet"
        if not src.is_file():
            continue
        counts = tokenize_file(tok, src, dst, config.batch_size, eot, tokenizer_file)
        metrics[f"num_docs_{split}"] = float(counts.docs)
        metrics[f"num_tokens_{split}"] = float(counts.tokens)
        text_bytes += counts.text_bytes
        ordinary_tokens += counts.tokens - (counts.docs if eot is not None else 0)
        datasets += [
            Dataset(f"corpus/{split}", src, split, num_rows=counts.docs),
            Dataset(f"tokens/{split}", dst, "output", num_rows=counts.docs),
        ]
    metrics["bytes_per_token"] = text_bytes / max(ordinary_tokens, 1)
    metrics["eot_appended"] = float(eot is not None)
    return StageResult(metrics=metrics, datasets=datasets)


STAGE = Stage(
    name="text.tokenize",
    version="1",
    config=TokenizeConfig,
    inputs=("corpus", "tokenizer"),
    outputs=("tokens",),
    run=_run,
    key_metrics=("num_tokens_train", "num_tokens_val", "bytes_per_token"),
)
