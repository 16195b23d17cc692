"""word2vec vectors as a served model: `load(dir).predict(words)` is `Word2Vec.vector` of each
word, a word without a vector fails the batch naming it, and the stage declares the model."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from components.text.bpe.tokenizer import ENDOFTEXT
from components.text.bpe.trainer import train_bpe
from components.text.word2vec import serve
from components.text.word2vec.stage import STAGE
from components.text.word2vec.trainer import train_word2vec
from components.text.word2vec.vectors import Word2Vec
from tests.components.text.word2vec.planted import DOCS, small_config, two_clusters


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    tokenizer = train_bpe(DOCS, vocab_size=400, special_tokens=[ENDOFTEXT])
    ids = [np.asarray(tokenizer.encode(d + ENDOFTEXT), dtype=np.int64) for d in DOCS]
    config = small_config(unit="token", min_count=2, epochs=1, batch_size=256)
    model = train_word2vec(lambda: ids, config, tokenizer=tokenizer)
    return model.save(tmp_path_factory.mktemp("token-model"))


@pytest.fixture(scope="module")
def word_dir(tmp_path_factory):
    sentences, _, _ = two_clusters(seed=1, n=100)
    model = train_word2vec(lambda: sentences, small_config(epochs=1))
    return model.save(tmp_path_factory.mktemp("word-model"))


def test_predict_is_the_vector_of_each_word(token_dir, word_dir):
    for directory, words in (
        (token_dir, ["the", "Statement", "file", "Ġthe", ENDOFTEXT]),
        (word_dir, ["a0", "b3", "A0"]),  # the config lowercases: "A0" is "a0"
    ):
        model, served = Word2Vec.load(directory), serve.load(directory)
        vectors = served.predict(words)
        assert vectors.dtype == np.float32 and vectors.shape == (len(words), model.config.dim)
        for word, row in zip(words, vectors, strict=True):
            np.testing.assert_array_equal(row, model.vector(word), err_msg=word)
        assert served.predict([]).shape == (0, model.config.dim)


def test_a_word_without_a_vector_fails_the_batch_naming_it(token_dir, word_dir):
    token_model = Word2Vec.load(token_dir)
    assert token_model.vector("жжж") is None  # no Cyrillic byte in this corpus
    with pytest.raises(serve.OutOfVocabularyError) as info:
        serve.load(token_dir).predict(["the", "жжж", "file", "ѣѣ"])
    assert info.value.missing == ["жжж", "ѣѣ"]
    assert str(info.value).startswith("2 of 4 words are out of the vocabulary")
    assert "'жжж', 'ѣѣ'" in str(info.value)
    with pytest.raises(KeyError, match="zebra"):  # a KeyError, as `most_similar` raises
        serve.load(word_dir).predict(["a1", "zebra"])


def test_a_long_list_of_unknown_words_is_cut_short():
    error = serve.OutOfVocabularyError([f"w{i}" for i in range(25)], batch=30)
    assert str(error).endswith("'w19' and 5 more") and "'w20'" not in str(error)


def test_predict_refuses_what_is_not_a_list_of_words(word_dir):
    served = serve.load(word_dir)
    with pytest.raises(TypeError, match="list of words, got one str"):
        served.predict("a0")
    with pytest.raises(TypeError, match="item 0 is 7"):
        served.predict([7])


def test_the_stage_declares_its_model_output_as_the_model():
    (model,) = STAGE.models
    assert model.role == "model" and model.role in STAGE.outputs
    module, _, function = model.loader.partition(":")
    assert getattr(importlib.import_module(module), function) is serve.load
    assert {"numpy", "safetensors", "torch"} <= set(model.requirements)
