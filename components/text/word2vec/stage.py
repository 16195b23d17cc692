"""Stage "text.word2vec": train word2vec on the token stream (or on words) of a corpus.

Inputs: "tokens" (parquet `ids` per document, from stage "text.tokenize"), "tokenizer" (its
BPE tokenizer) and "corpus" (parquet `text`: the training text when `unit: word`, the words
to export when `unit: token`). Only the train split is read; each document is one sentence
(windows never cross documents).

Output "model": a directory holding

    config.json, model.safetensors, vocab.json, tokenizer/
                        the `Word2Vec.save` artifact (`Word2Vec.load(dir)`)
    vectors.bin         every unit's vector, word2vec.c binary (gensim
                        `KeyedVectors.load_word2vec_format(path, binary=True)`), keyed by
                        `Word2Vec.keys`: words, or for token units tokens spelled "Ġthe"
    vectors.safetensors the same, {"vectors"} + metadata "word2vec" {"unit", "keys"}
    words.bin           token units only: vectors keyed by plain words ("the"), each equal
                        to `Word2Vec.vector(word)` (the mean of the tokens of " word"), for
                        the 50,000 most frequent corpus words seen >= `min_count` times
                        (lowercased when `lowercase`; `words.py`); word2vec.c binary
    words.safetensors   the same, {"vectors"} + metadata "word2vec" {"unit": "word", "keys",
                        "counts"}

For `unit: word` the vectors are already keyed by words and no words.* is written.
Checkpoints go to the runner's work directory after every epoch, so a killed run resumes at
the last finished epoch (and returns the whole loss curve). Inputs are checked before they
are trusted (`sentences`): a damaged Parquet file, or token ids outside the tokenizer's
vocabulary, are a `StageInputError` naming the file; the corpus words are counted before
training, so a bad corpus fails the run before any training time is spent.
"""

from __future__ import annotations

import time
from pathlib import Path

from components.stage import (
    Dataset,
    Output,
    ServedModel,
    Stage,
    StageInputError,
    StageIO,
    StageResult,
)
from components.text.bpe.tokenizer import BpeTokenizer
from components.text.word2vec.config import Word2VecConfig
from components.text.word2vec.sentences import ParquetSentences
from components.text.word2vec.trainer import EmptyCorpusError, pick_device, train_word2vec
from components.text.word2vec.vocabulary import Vocabulary
from components.text.word2vec.words import count_words, export_words, frequent_words


def _corpus_words(config: Word2VecConfig, text: Path) -> Vocabulary:
    """The corpus words a token model's `words.bin` holds (`words.frequent_words`)."""
    if not text.is_file():
        raise StageInputError(f"{text}: corpus text not found (its words are exported)")
    return frequent_words(count_words(text, config.lowercase), config.min_count)


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
    words_started = time.perf_counter()
    text = io.inputs["corpus"] / "train.parquet"
    # token units: the plain words to export vectors for (words.bin), counted before training
    word_vocab = _corpus_words(config, text) if config.unit == "token" else None
    words_seconds = time.perf_counter() - words_started

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
    datasets = [Dataset("train", source, "train"), Dataset("model", Output("model"), "output")]
    if word_vocab is not None:
        export_started = time.perf_counter()
        exported = export_words(model, word_vocab, out)
        metrics["exported_words"] = float(len(exported))
        # counting the corpus words + composing and writing their vectors (MLflow only)
        metrics["export_words_seconds"] = words_seconds + time.perf_counter() - export_started
        datasets.insert(1, Dataset("corpus/train", text, "train"))
    return StageResult(metrics=metrics, datasets=datasets)


STAGE = Stage(
    name="text.word2vec",
    version="1",
    config=Word2VecConfig,
    inputs=("tokens", "tokenizer", "corpus"),
    outputs=("model",),
    run=_run,
    key_metrics=("vocab_size", "final_loss"),
    models=(
        ServedModel(
            role="model",
            loader="components.text.word2vec.serve:load",  # predict(words) -> vectors [n, D]
            requirements=("numpy", "pyarrow", "regex", "safetensors", "torch"),
        ),
    ),
)
