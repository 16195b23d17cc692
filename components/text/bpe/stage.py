"""Stage "text.bpe": train a byte-level BPE tokenizer on a corpus.

Input "corpus": a directory with `train.parquet` (and optionally `val.parquet`), columns
`doc_id` (string) and `text` (string), read in record batches.

Output "tokenizer": a new directory holding

    config.json             the tokenizer, loom-bpe v1 (`BpeTokenizer.load(dir)`)
    tokenizer.json          Hugging Face: `tokenizers.Tokenizer.from_file(dir/"tokenizer.json")`,
                            `transformers.PreTrainedTokenizerFast(tokenizer_file=...)`
    tokenizer_config.json   with special_tokens_map.json:
    special_tokens_map.json   `transformers.AutoTokenizer.from_pretrained(dir)`
    tokenizer.tiktoken      tiktoken rank file (`tiktoken.load.load_tiktoken_bpe`)
    gpt2/vocab.json         GPT-2 layout (`BpeTokenizer.from_gpt2(vocab.json, merges.txt)`)
    gpt2/merges.txt

Every one of them gives the ids of `BpeTokenizer.encode` (tested). The Hugging Face files sit
at the top, where HF tools look for them; Loom's own file is `config.json` (format
"loom-bpe"), which transformers reads as a model config without a `model_type` and ignores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from components.inputs import open_parquet, parquet_batches
from components.stage import (
    Dataset,
    Output,
    ServedModel,
    Stage,
    StageInputError,
    StageIO,
    StageResult,
)
from components.text.bpe.config import BpeStageConfig
from components.text.bpe.tokenizer import BpeTokenizer
from components.text.bpe.trainer import train_bpe

BATCH_ROWS = 1024
MAX_CURVE_POINTS = 500
COMPRESSION_SAMPLE_BYTES = 4 << 20  # enough text for a stable bytes/token figure
MAX_ARTIFACT_BYTES = 8 << 20


def read_texts(path: Path, max_docs: int | None = None) -> Iterator[str]:
    """The `text` column of a corpus parquet file, batch by batch (bounded memory)."""
    if not path.is_file():
        raise StageInputError(f"{path}: corpus file not found")
    parquet = open_parquet(path)
    if "text" not in parquet.schema_arrow.names:
        raise StageInputError(f"{path}: no 'text' column (columns: {parquet.schema_arrow.names})")
    left = max_docs
    for batch in parquet_batches(parquet, path, batch_size=BATCH_ROWS, columns=["text"]):
        for text in batch.column(0).to_pylist():
            if left == 0:
                return
            if text:
                yield text
                left = None if left is None else left - 1


def _train(config: BpeStageConfig, train_path: Path) -> tuple[BpeTokenizer, int]:
    docs = 0

    def texts() -> Iterator[str]:
        nonlocal docs
        for text in read_texts(train_path, config.max_docs):
            docs += 1
            yield text

    tok = train_bpe(texts(), config.vocab_size, config.special_tokens, progress=True)
    if docs == 0:
        raise StageInputError(f"{train_path}: holds no text to train on")
    return tok, docs


def bytes_per_token(tok: BpeTokenizer, texts: Iterator[str]) -> float:
    """UTF-8 bytes per token over up to COMPRESSION_SAMPLE_BYTES of `texts`."""
    num_bytes = num_tokens = 0
    for text in texts:
        num_bytes += len(text.encode("utf-8"))
        num_tokens += len(tok.encode_ordinary(text))
        if num_bytes >= COMPRESSION_SAMPLE_BYTES:
            break
    return num_bytes / max(num_tokens, 1)


def _subsample(values: list[int], max_points: int) -> list[tuple[int, float]]:
    """[(index, value)] at most max_points evenly spaced, always with the last point."""
    if not values:
        return []
    stride = -(-len(values) // max_points)
    points = [(i, float(values[i])) for i in range(0, len(values), stride)]
    if points[-1][0] != len(values) - 1:
        points.append((len(values) - 1, float(values[-1])))
    return points


def _run(config: BpeStageConfig, io: StageIO) -> StageResult:
    corpus, out = io.inputs["corpus"], io.outputs["tokenizer"]
    train_path, val_path = corpus / "train.parquet", corpus / "val.parquet"
    tok, docs = _train(config, train_path)
    stats = tok.train_stats
    assert stats is not None

    out.mkdir(parents=True)
    saved = tok.save(out)
    tok.export_tiktoken(out / "tokenizer.tiktoken")
    tok.export_transformers(out)
    tok.export_gpt2(out / "gpt2")

    split = "val" if val_path.is_file() else "train"
    sample = read_texts(val_path if split == "val" else train_path)
    metrics = {
        "vocab_size": float(tok.vocab_size),
        "num_merges": float(len(stats.merge_counts)),
        "train_seconds": stats.seconds,
        "train_docs": float(docs),
        "train_words": float(stats.words),
        "unique_words": float(stats.unique_words),
        f"{split}_bytes_per_token": bytes_per_token(tok, sample),
    }
    datasets = [Dataset("corpus/train", train_path, "train", num_rows=docs)]
    if split == "val":
        datasets.append(Dataset("corpus/val", val_path, "val"))
    datasets.append(Dataset("tokenizer", Output("tokenizer"), "output"))
    return StageResult(
        metrics=metrics,
        curves={"merge_count": _subsample(stats.merge_counts, MAX_CURVE_POINTS)},
        artifacts=[Output("tokenizer", saved.name)]
        if saved.stat().st_size <= MAX_ARTIFACT_BYTES
        else [],
        datasets=datasets,
    )


STAGE = Stage(
    name="text.bpe",
    version="1",
    config=BpeStageConfig,
    inputs=("corpus",),
    outputs=("tokenizer",),
    run=_run,
    key_metrics=("vocab_size", "val_bytes_per_token", "unique_words"),
    models=(
        ServedModel(
            role="tokenizer",
            loader="components.text.bpe.serve:load",  # predict(texts) -> token ids per text
            requirements=("pyarrow", "regex"),
        ),
    ),
)
