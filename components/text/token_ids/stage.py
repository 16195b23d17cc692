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

from components.stage import Dataset, Output, Stage, StageInputError, StageIO, StageResult
from components.text.bpe.tokenizer import ENDOFTEXT, FILENAME, BpeTokenizer
from components.text.token_ids.config import TokenizeConfig
from components.text.token_ids.encode import tokenize_file

SPLITS = ("train", "val")


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
            Dataset(f"tokens/{split}", Output("tokens", dst.name), "output", num_rows=counts.docs),
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
