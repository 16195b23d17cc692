"""The tokenizer as a served model: `load(dir).predict(texts)` is `BpeTokenizer.encode` of each
text, and what the stage declares as its model."""

from __future__ import annotations

import importlib
from pydoc_data.topics import topics

import pytest

from components.stage import StageInputError
from components.text.bpe import serve
from components.text.bpe.stage import STAGE
from components.text.bpe.tokenizer import ENDOFTEXT, BpeTokenizer
from components.text.bpe.trainer import train_bpe

TEXTS = [topics[name] for name in sorted(topics)][:20]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = train_bpe(TEXTS, vocab_size=320, special_tokens=[ENDOFTEXT])
    directory = tmp_path_factory.mktemp("tokenizer")
    tok.save(directory)
    return directory


def test_predict_is_encode_of_each_text(saved):
    tok, model = BpeTokenizer.load(saved), serve.load(saved)
    texts = [TEXTS[0][:400], "the file", f"one{ENDOFTEXT}two", "", "日本語 🤖"]
    ids = model.predict(texts)
    assert ids == [tok.encode(t) for t in texts]
    assert tok.special_tokens[ENDOFTEXT] in ids[2]  # special tokens in a text map to their id
    assert ids[3] == [] and tok.decode(ids[4]) == "日本語 🤖"
    assert model.predict([]) == []


def test_predict_refuses_what_is_not_a_list_of_strings(saved):
    model = serve.load(saved)
    with pytest.raises(TypeError, match="list of strings, got one str"):
        model.predict("the file")  # would otherwise encode character by character
    with pytest.raises(TypeError, match="item 1 is 42"):
        model.predict(["the", 42])


def test_load_refuses_a_directory_without_a_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text('{"format": "loom-word2vec", "version": 2}')
    with pytest.raises(StageInputError, match="config.json"):
        serve.load(tmp_path)


def test_the_stage_declares_its_tokenizer_output_as_the_model():
    (model,) = STAGE.models
    assert model.role == "tokenizer" and model.role in STAGE.outputs
    module, _, function = model.loader.partition(":")
    assert getattr(importlib.import_module(module), function) is serve.load
    assert set(model.requirements) == {"pyarrow", "regex"}
