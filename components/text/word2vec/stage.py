"""Stage "text.word2vec": train word2vec on the token stream (or on words) of a corpus.

Inputs: "tokens" (parquet `ids` per document, from stage "text.tokenize"), "tokenizer" (its
BPE tokenizer) and "corpus" (parquet `text`, used when `unit: word`). Only the train split
is read; each document is one sentence (windows never cross documents).

Output "model": the `Word2Vec.save` artifact plus `vectors.bin` (word2vec.c binary) and
`vectors.safetensors` exports. Checkpoints go to the runner's work directory after every
epoch, so a killed run resumes at the last finished epoch (and returns the whole loss curve).
Inputs are checked before they are trusted (`sentences`): a damaged Parquet file, or token
ids outside the tokenizer's vocabulary, are a `StageInputError` naming the file.
"""

from __future__ import annotations

import time

from components.stage import Dataset, Output, Stage, StageInputError, StageIO, StageResult
from components.text.bpe.tokenizer import BpeTokenizer
from components.text.word2vec.config import Word2VecConfig
from components.text.word2vec.sentences import ParquetSentences
from components.text.word2vec.trainer import EmptyCorpusError, pick_device, train_word2vec


def _run(config: Word2VecConfig, io: StageIO) -> StageResult:
    pick_device(config.device, key="runtime.word2vec.device")  # before any input is read
    if config.unit == "token":
        source, column = io.inputs["tokens"] / "train.parquet", "ids"
        tokenizer = BpeTokenizer.load(io.inputs["tokenizer"])
    else:
        source, column, tokenizer = io.inputs["corpus"] / "train.parquet", "text", None
    if not source.is_file():
        raise StageInputError(f"{source}: training data not found")
    vocab_size = tokenizer.vocab_size if tokenizer is not None else None
    sentences = ParquetSentences(source, column, config.lowercase, vocab_size=vocab_size)

    started = time.perf_counter()
    try:  # the loss curve goes out live (a resumed run first replays the epochs it skips)
        model = train_word2vec(
            sentences, config, tokenizer=tokenizer, work_dir=io.work,
            on_metrics=lambda step, m: io.log.log_metrics(step, {"loss": m["loss"]}),
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
        datasets=[Dataset("train", source, "train"), Dataset("model", Output("model"), "output")],
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
