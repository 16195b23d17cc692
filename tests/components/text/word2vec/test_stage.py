"""Stage "text.word2vec" on tiny parquet inputs (called directly), and once through the real
`loom stage` runner on bad params."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from gensim.models import KeyedVectors
from safetensors import safe_open

from components import registry
from components.config import ConfigError, identity, runtime_keys
from components.stage import RecordingLogger, StageInputError, StageIO
from components.text.bpe.tokenizer import ENDOFTEXT, BpeTokenizer
from components.text.bpe.trainer import train_bpe
from components.text.word2vec import trainer
from components.text.word2vec import words as words_module
from components.text.word2vec.config import Word2VecConfig
from components.text.word2vec.sentences import ParquetSentences, words
from components.text.word2vec.stage import STAGE
from components.text.word2vec.vectors import Word2Vec
from tests.components.bad_parquet import corrupt_copy, truncated_copy
from tests.conftest import loom

DOCS = [topics[name] for name in sorted(topics)][:24]
TEXTS = [
    "Don't stop: the cat sat on the mat 42 times.",
    "The cat and the dog; THE DOG sat, the cat ran_away.",
    "",
    "Café, naïve café! 3 dogs and 2 cats.",
    "the mat the mat the cat",
]
METRICS = {"vocab_size", "train_units", "final_loss", "train_seconds", "train_units_per_second"}
TOKEN_METRICS = METRICS | {"exported_words", "export_words_seconds"}


def config(**changes) -> Word2VecConfig:
    base = dict(
        dim=16, window=3, negative=5, min_count=2, epochs=4, batch_size=128, workers=1,
        device="cpu", progress=False,
    )  # fmt: skip
    return Word2VecConfig(**(base | changes))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe(DOCS, vocab_size=400, special_tokens=[ENDOFTEXT]).save(out)
    return out


def write_tokens(directory: Path, ids: list[list[int]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "doc_id": [f"train/{i}" for i in range(len(ids))],
        "ids": pa.array(ids, type=pa.list_(pa.int32())),
    })  # fmt: skip
    pq.write_table(table, directory / "train.parquet")
    return directory


def write_corpus(directory: Path, texts: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    ids = [f"train/{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), directory / "train.parquet")
    return directory


def io_for(tmp_path: Path, tokens: Path, tokenizer: Path, corpus: Path) -> StageIO:
    return StageIO(
        inputs={"tokens": tokens, "tokenizer": tokenizer, "corpus": corpus},
        outputs={"model": tmp_path / "out" / "model"},
        work=tmp_path / "work",
        log=RecordingLogger(),
    )


@pytest.fixture
def token_inputs(tmp_path, tokenizer_dir) -> StageIO:
    tok = BpeTokenizer.load(tokenizer_dir)
    ids = [tok.encode(doc) + [tok.special_tokens[ENDOFTEXT]] for doc in DOCS]
    tokens = write_tokens(tmp_path / "tokens", ids)
    return io_for(tmp_path, tokens, tokenizer_dir, write_corpus(tmp_path / "corpus", DOCS))


def test_registered():
    assert registry.load("text.word2vec") is STAGE
    assert STAGE.inputs == ("tokens", "tokenizer", "corpus") and STAGE.outputs == ("model",)
    assert STAGE.config is Word2VecConfig


def test_token_stage_writes_model_and_exports(token_inputs, tokenizer_dir):
    cfg = config()
    result = STAGE.run(cfg, token_inputs)
    out = token_inputs.outputs["model"]
    names = {p.name for p in out.iterdir()}
    assert names == {
        "model.safetensors", "vocab.json", "config.json", "tokenizer", "vectors.bin",
        "vectors.safetensors", "words.bin", "words.safetensors",
    }  # fmt: skip
    model = Word2Vec.load(out)
    # The artifact records what was made, not how it ran (runtime knobs are left out).
    assert identity(model.config) == identity(cfg) and len(model.history) == cfg.epochs
    saved = json.loads((out / "config.json").read_text())["config"]
    assert not set(runtime_keys(Word2VecConfig)) & set(saved)
    assert "Ġthe" in model.keys

    # the tokenizer saved with the model is the input tokenizer
    saved, source = BpeTokenizer.load(out / "tokenizer"), BpeTokenizer.load(tokenizer_dir)
    assert saved.encode(DOCS[0]) == source.encode(DOCS[0])

    kv = KeyedVectors.load_word2vec_format(out / "vectors.bin", binary=True)
    assert list(kv.index_to_key) == model.keys and np.array_equal(kv.vectors, model.vectors)
    with safe_open(out / "vectors.safetensors", "np") as f:
        assert np.array_equal(f.get_tensor("vectors"), model.vectors)
        assert json.loads(f.metadata()["word2vec"])["keys"] == model.keys

    # the vocabulary is every token id seen >= min_count times in the parquet ids
    counts = Counter(i for row in pq.read_table(token_inputs.inputs["tokens"] / "train.parquet")
                     .column("ids").to_pylist() for i in row)  # fmt: skip
    kept = {i: c for i, c in counts.items() if c >= cfg.min_count}
    assert sorted(model.vocab.keys) == sorted(kept)
    assert set(result.metrics) == TOKEN_METRICS
    assert result.metrics["vocab_size"] == len(kept)
    assert result.metrics["train_units"] == sum(kept.values())
    assert result.metrics["final_loss"] == model.history[-1]
    assert result.metrics["train_seconds"] > 0 and result.metrics["train_units_per_second"] > 0

    # one loss point per streamed chunk, at increasing corpus positions, falling overall
    curve = token_inputs.log.series()["loss"]  # reported live, not in the result
    assert result.curves == {}
    steps, losses = [s for s, _ in curve], [v for _, v in curve]
    assert len(curve) >= cfg.epochs
    assert steps == sorted(set(steps)) and steps[-1] == cfg.epochs * sum(kept.values())
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    assert {d.name: d.context for d in result.datasets} == {
        "train": "train", "corpus/train": "train", "model": "output",
    }  # fmt: skip


def corpus_word_counts(texts: list[str], lowercase: bool = True) -> Counter:
    return Counter(w for text in texts for w in words(text, lowercase))


def test_token_stage_exports_word_vectors_that_gensim_reads(token_inputs):
    """words.bin: plain corpus words, as frequent as min_count, most frequent first, each
    vector the one `Word2Vec.vector(word)` composes; words.safetensors holds the same."""
    cfg = config()
    result = STAGE.run(cfg, token_inputs)
    out = token_inputs.outputs["model"]
    model = Word2Vec.load(out)
    kv = KeyedVectors.load_word2vec_format(out / "words.bin", binary=True)
    exported = list(kv.index_to_key)
    assert exported[:3] == ["the", "a", "is"] and "Ġthe" not in exported
    for word in exported:
        assert np.array_equal(kv[word], model.vector(word)), word
    assert np.array_equal(kv["the"], model.vector("the"))
    assert np.array_equal(kv["the"], model.vector("Ġthe"))  # " the" is one token

    counts = corpus_word_counts(DOCS)
    frequent = sorted((-c, w) for w, c in counts.items() if c >= cfg.min_count)
    composable = [w for _, w in frequent if model.vector(w) is not None]
    assert exported == composable  # every frequent word that composes, none other
    assert len(exported) > 900  # here every frequent word composes (see test_vectors)
    assert result.metrics["exported_words"] == len(exported)
    assert result.metrics["export_words_seconds"] > 0
    with safe_open(out / "words.safetensors", "np") as f:
        assert np.array_equal(f.get_tensor("vectors"), kv.vectors)
        info = json.loads(f.metadata()["word2vec"])
    assert info == {"unit": "word", "keys": exported, "counts": [counts[w] for w in exported]}


def test_exported_words_follow_lowercase_and_the_bounds(token_inputs, monkeypatch):
    out = token_inputs.outputs["model"]

    def exported(work: str, **changes) -> KeyedVectors:
        STAGE.run(config(**changes), dataclasses.replace(token_inputs, work=out.parent / work))
        return KeyedVectors.load_word2vec_format(out / "words.bin", binary=True)

    every = exported("all").index_to_key
    monkeypatch.setattr(words_module, "MAX_WORDS", 25)
    assert exported("capped").index_to_key == every[:25]
    # max_vocab bounds the tokens, not the words: fewer words compose from 60 tokens
    bounded = exported("bounded", max_vocab=60).index_to_key
    assert 0 < len(bounded) < 25 and bounded == [w for w in every[:25] if w in bounded]
    monkeypatch.undo()

    cased = exported("cased", lowercase=False)
    assert {"The", "the"} <= set(cased.index_to_key) and "The" not in every
    assert corpus_word_counts(DOCS, lowercase=False)["The"] >= 5
    model = Word2Vec.load(out)
    assert np.array_equal(cased["The"], model.vector("The"))
    assert not np.array_equal(cased["The"], cased["the"])


def test_token_stage_without_corpus_text_fails_before_training(token_inputs, tmp_path):
    io = dataclasses.replace(token_inputs, inputs=token_inputs.inputs | {"corpus": tmp_path / "x"})
    with pytest.raises(StageInputError) as err:
        STAGE.run(config(), io)
    assert str(err.value) == (
        f"{tmp_path / 'x' / 'train.parquet'}: corpus text not found (its words are exported)"
    )
    assert not io.outputs["model"].exists() and not (io.work / "encoded").exists()


def test_word_unit_trains_on_the_words_of_the_corpus_text(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", TEXTS)
    # word units read neither the tokens nor the tokenizer
    io = io_for(tmp_path, tmp_path / "no-tokens", tmp_path / "no-tokenizer", corpus)
    cfg = config(unit="word", min_count=2, sample=0.0)
    result = STAGE.run(cfg, io)
    model = Word2Vec.load(io.outputs["model"])
    counts = Counter(w for text in TEXTS for w in words(text))
    expected = sorted(((-c, w) for w, c in counts.items() if c >= 2))
    assert model.keys == [w for _, w in expected]
    assert model.keys[:3] == ["the", "cat", "mat"]  # 9, 4 and 3 times ("THE" folded)
    assert "café" in model.keys and "don't" not in model.keys  # "don't" occurs once
    assert model.vocab.counts.tolist() == [-c for c, _ in expected]
    assert not (io.outputs["model"] / "tokenizer").exists()
    assert not (io.outputs["model"] / "words.bin").exists()  # its vectors are words already
    assert set(result.metrics) == METRICS
    assert result.metrics["vocab_size"] == len(model.keys)
    assert result.metrics["train_units"] == sum(c for w, c in counts.items() if c >= 2)


def test_word_unit_respects_lowercase_false(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", TEXTS)
    io = io_for(tmp_path, tmp_path / "no-tokens", tmp_path / "no-tokenizer", corpus)
    STAGE.run(config(unit="word", min_count=1, lowercase=False, epochs=1), io)
    keys = Word2Vec.load(io.outputs["model"]).keys
    assert {"The", "THE", "the", "DOG", "Don't"} <= set(keys)


def test_empty_token_stream_names_the_parquet_file(tmp_path, tokenizer_dir):
    tokens = write_tokens(tmp_path / "tokens", [[], [], []])
    io = io_for(tmp_path, tokens, tokenizer_dir, write_corpus(tmp_path / "corpus", TEXTS))
    with pytest.raises(StageInputError, match="empty token stream") as err:
        STAGE.run(config(), io)
    assert str(tokens / "train.parquet") in str(err.value)
    assert not io.outputs["model"].exists()


def test_min_count_above_every_count_names_file_and_key(token_inputs):
    with pytest.raises(StageInputError, match=r"min_count = 1000000000\b") as err:
        STAGE.run(config(min_count=10**9), token_inputs)
    assert str(token_inputs.inputs["tokens"] / "train.parquet") in str(err.value)


def test_missing_training_data_and_missing_column(tmp_path, tokenizer_dir):
    io = io_for(tmp_path, tmp_path / "tokens", tokenizer_dir, tmp_path / "corpus")
    with pytest.raises(StageInputError, match="training data not found") as err:
        STAGE.run(config(), io)
    assert str(tmp_path / "tokens" / "train.parquet") in str(err.value)
    write_corpus(tmp_path / "tokens", ["ids here are text"])  # a parquet without `ids`
    with pytest.raises(StageInputError, match="no column 'ids'"):
        STAGE.run(config(), io)


def test_token_ids_outside_the_tokenizer_vocab_name_the_parquet_file(tmp_path, tokenizer_dir):
    tokens = write_tokens(tmp_path / "tokens", [[1, 2, 3]] * 20 + [[5, 400, 6]])  # vocab: 400
    io = io_for(tmp_path, tokens, tokenizer_dir, write_corpus(tmp_path / "corpus", TEXTS))
    with pytest.raises(StageInputError) as err:
        STAGE.run(config(), io)
    assert str(err.value) == (
        f"{tokens / 'train.parquet'}: token id 400 is outside the tokenizer's vocabulary "
        "0..399 (tokens made with another tokenizer?)"
    )


@pytest.mark.parametrize("damage", [truncated_copy, corrupt_copy])
def test_damaged_tokens_parquet_is_named(token_inputs, tmp_path, damage):
    tokens = token_inputs.inputs["tokens"] / "train.parquet"
    good = tmp_path / "good.parquet"
    pq.write_table(pq.read_table(tokens), good, row_group_size=5)
    damage(good, tokens)
    with pytest.raises(StageInputError) as err:
        STAGE.run(config(), token_inputs)
    assert str(err.value).startswith(
        f"{tokens}: not a readable Parquet file (truncated or corrupt?)"
    )


def test_ids_column_of_another_type_is_named(tmp_path, tokenizer_dir):
    (tmp_path / "tokens").mkdir()
    pq.write_table(pa.table({"ids": [["a", "b"]]}), tmp_path / "tokens" / "train.parquet")
    io = io_for(tmp_path, tmp_path / "tokens", tokenizer_dir, tmp_path / "no-corpus")
    with pytest.raises(
        StageInputError, match=r"column 'ids' is list<element: string>, expected list<int32>"
    ):
        STAGE.run(config(), io)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_fails_before_reading_inputs(tmp_path, monkeypatch):
    reads = []
    monkeypatch.setattr(ParquetSentences, "__init__", lambda *args: reads.append(args))
    io = io_for(tmp_path, tmp_path / "no-tokens", tmp_path / "no-tokenizer", tmp_path / "none")
    with pytest.raises(
        ConfigError, match=r"^runtime\.word2vec\.device = 'cuda': expected an available"
    ):
        STAGE.run(config(device="cuda"), io)
    assert reads == []


def test_resumed_stage_returns_the_whole_loss_curve(token_inputs, tmp_path, monkeypatch):
    """A run interrupted in epoch 3 and rerun returns the uninterrupted run's curve."""
    monkeypatch.setattr(trainer, "CHUNK", 8192)  # several points per epoch
    fresh_io = io_for(tmp_path / "fresh", *token_inputs.inputs.values())
    fresh = STAGE.run(config(), fresh_io)
    epoch = trainer._Trainer._epoch

    def interrupted(self, kernel, index, *args):
        if index == 2:
            raise KeyboardInterrupt
        return epoch(self, kernel, index, *args)

    monkeypatch.setattr(trainer._Trainer, "_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        STAGE.run(config(), token_inputs)
    monkeypatch.setattr(trainer._Trainer, "_epoch", epoch)
    rerun = dataclasses.replace(token_inputs, log=RecordingLogger())  # the runner's next run
    resumed = STAGE.run(config(), rerun)
    fresh_curve, resumed_curve = fresh_io.log.series(), rerun.log.series()
    assert len(fresh_curve["loss"]) > 2 * 4 and resumed_curve == fresh_curve
    assert resumed.metrics["final_loss"] == fresh.metrics["final_loss"]


def test_words():
    assert words("Don't stop 42 times") == ["don't", "stop", "times"]
    assert words("Don't stop", lowercase=False) == ["Don't", "stop"]
    assert words("snake_case x2 'quoted' a--b") == ["snake", "case", "x", "quoted", "a", "b"]
    assert words("Café naïve Ärger") == ["café", "naïve", "ärger"]
    assert words("") == [] and words("42 3.14 --") == []


@pytest.mark.parametrize("row_group_size", [None, 7])
@pytest.mark.parametrize("batch_rows", [1, 3, 1024])
def test_parquet_sentences_stream_every_row(tmp_path, row_group_size, batch_rows):
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 300, size=rng.integers(0, 20)).tolist() for _ in range(50)]
    path = tmp_path / "train.parquet"
    table = pa.table({"ids": pa.array(ids, type=pa.list_(pa.int32())), "text": TEXTS * 10})
    pq.write_table(table, path, row_group_size=row_group_size)
    stream = ParquetSentences(path, "ids", batch_rows=batch_rows)
    for _ in range(2):  # re-iterable: a fresh pass per call
        assert [s.tolist() for s in stream()] == ids
    texts = list(ParquetSentences(path, "text", batch_rows=batch_rows)())
    assert texts == [words(t) for t in TEXTS * 10]


# ---- through the real runner ------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    files = [p for d in ("data", "metrics") for p in (root / d).rglob("*") if p.is_file()]
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, says",
    [
        ({"min_count": 10**9}, ["min_count = 1000000000", "train.parquet"]),
        ({"alpha": 1e4, "update_cap": None}, ["diverged", "alpha = 10000.0, update_cap = None"]),
    ],
    ids=["min_count", "diverges"],
)
def test_runner_bad_config_fails_and_keeps_outputs(project, experiment, change, says):
    before = snapshot(project)
    assert any(p.startswith("data/word2vec/small/") for p in before)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["word2vec"].update(change)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    res = loom(project, "stage", "word2vec@small")
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("loom stage word2vec@small: error:"), res.stderr
    assert all(text in last for text in says), last
    assert snapshot(project) == before
