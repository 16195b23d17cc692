"""Trained word2vec vectors: queries against gensim's on the same vectors, token keys, exports
that gensim reads, save/load, and damaged or foreign artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from gensim.models import KeyedVectors
from safetensors import safe_open
from safetensors.torch import save_file

from components.config import identity
from components.stage import StageInputError
from components.text.bpe.tokenizer import ENDOFTEXT, BpeTokenizer, bytes_to_unicode
from components.text.bpe.trainer import train_bpe
from components.text.word2vec.trainer import train_word2vec
from components.text.word2vec.vectors import Word2Vec
from tests.components.text.word2vec.planted import (
    DOCS,
    countries_and_capitals,
    small_config,
    two_clusters,
)


def test_queries_agree_with_gensim_on_the_same_vectors(tmp_path):
    sentences = countries_and_capitals(seed=1)
    model = train_word2vec(lambda: sentences, small_config(window=6))
    kv = KeyedVectors.load_word2vec_format(
        model.export_word2vec(tmp_path / "v.bin", binary=True), binary=True
    )
    for word in ("country0", "capital3", "city", "t2x1"):
        ours = model.most_similar(word, k=5)
        theirs = kv.most_similar(word, topn=5)
        assert [w for w, _ in ours] == [w for w, _ in theirs]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)
    ours = model.analogy("country1", "capital1", "country2", k=3)
    theirs = kv.most_similar(positive=["capital1", "country2"], negative=["country1"], topn=3)
    assert [w for w, _ in ours] == [w for w, _ in theirs]


# ---- token units, export, save/load -----------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> BpeTokenizer:
    return train_bpe(DOCS, vocab_size=400, special_tokens=[ENDOFTEXT])


@pytest.fixture(scope="module")
def token_model(tokenizer) -> Word2Vec:
    ids = [np.asarray(tokenizer.encode(d + ENDOFTEXT), dtype=np.int64) for d in DOCS]
    config = small_config(unit="token", min_count=2, epochs=2, batch_size=256)
    return train_word2vec(lambda: ids, config, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def word_model() -> Word2Vec:
    sentences, _, _ = two_clusters(seed=1)
    return train_word2vec(lambda: sentences, small_config(epochs=2))


@pytest.fixture(params=["word", "token"])
def model(request, word_model, token_model) -> Word2Vec:
    return {"word": word_model, "token": token_model}[request.param]


def test_token_keys_are_gpt2_byte_level_spellings(token_model, tokenizer):
    keys = token_model.keys
    assert len(set(keys)) == len(keys)
    assert "Ġthe" in keys and "Ċ" in keys and ENDOFTEXT in keys
    decode = {c: b for b, c in bytes_to_unicode().items()}
    for key, token_id in zip(keys, token_model.vocab.keys, strict=True):
        if key != ENDOFTEXT:
            assert bytes(decode[c] for c in key) == tokenizer.token_bytes(token_id)
    the = tokenizer.encode(" the")
    assert len(the) == 1 and np.array_equal(token_model.vector("Ġthe"), token_model.vector(the[0]))
    words, vectors = token_model.vocabulary()
    assert {"the", "is", "and"} <= set(words)
    assert np.array_equal(vectors[words.index("the")], token_model.vector(the[0]))


def test_token_word_query_is_the_word_mid_sentence(token_model, tokenizer):
    """A string is a word first: "is" is the token of " is" (what `vocabulary()` and the
    analogies use), not the token "is" that starts a line, although both are keys."""
    row = token_model.vocab.index()
    line_start, mid_sentence = tokenizer.encode("is"), tokenizer.encode(" is")
    assert len(line_start) == len(mid_sentence) == 1 and "is" in token_model.keys
    assert np.array_equal(token_model.vector("is"), token_model.vector(mid_sentence[0]))
    assert not np.array_equal(token_model.vector("is"), token_model.vector(line_start[0]))
    words, vectors = token_model.vocabulary()
    assert np.array_equal(vectors[words.index("is")], token_model.vector("is"))
    # display keys that no word query means are their tokens: "Ġis", special tokens, and
    # keys whose word does not compose ("Ċ": " ċ" has bytes this corpus never had)
    assert np.array_equal(token_model.vector("Ġis"), token_model.vector(mid_sentence[0]))
    eot = tokenizer.special_tokens[ENDOFTEXT]
    assert np.array_equal(token_model.vector(ENDOFTEXT), token_model.vectors[row[eot]])
    newline = row[tokenizer.encode("\n")[0]]
    assert np.array_equal(token_model.vector("Ċ"), token_model.vectors[newline])


def test_word_vectors_are_the_vectors_of_the_words_that_compose(token_model, word_model):
    """`word_vectors` (what words.bin is made of): row i is `vector(word i)`; words that
    do not compose, special tokens and display keys are left out, the order kept."""
    asked = ["the", "Statement", "жжж", "Ġthe", ENDOFTEXT, "is", "statement"]
    assert token_model.vector("жжж") is None  # no Cyrillic byte in this corpus
    words, vectors = token_model.word_vectors(asked)
    assert words == ["the", "Statement", "is", "statement"]
    assert vectors.dtype == np.float32 and vectors.shape == (4, token_model.config.dim)
    for word, vec in zip(words, vectors, strict=True):
        assert np.array_equal(vec, token_model.vector(word)), word
    assert np.array_equal(vectors[1], vectors[3])  # lowercased before composing
    words, vectors = word_model.word_vectors(["a1", "zebra", "A1"])
    assert words == ["a1", "A1"] and np.array_equal(vectors[0], word_model.vector("a1"))
    assert token_model.word_vectors([])[1].shape == (0, token_model.config.dim)


def test_token_vocabulary_holds_only_words(token_model):
    words, _ = token_model.vocabulary()
    assert [w for w in words if not w.isascii()] == []


@pytest.mark.parametrize("binary", [False, True])
def test_export_word2vec_loads_in_gensim(model, binary, tmp_path):
    path = model.export_word2vec(tmp_path / "vectors.w2v", binary=binary)
    kv = KeyedVectors.load_word2vec_format(path, binary=binary)
    assert list(kv.index_to_key) == model.keys
    assert kv.vectors.shape == model.vectors.shape
    if binary:
        assert np.array_equal(kv.vectors, model.vectors)
    else:
        np.testing.assert_allclose(kv.vectors, model.vectors, rtol=1e-5, atol=1e-7)
        assert not np.array_equal(kv.vectors[:, 0], np.zeros(len(kv.vectors)))


def test_export_safetensors(model, tmp_path):
    path = model.export_safetensors(tmp_path / "vectors.safetensors")
    with safe_open(path, "np") as f:
        assert list(f.keys()) == ["vectors"]
        assert np.array_equal(f.get_tensor("vectors"), model.vectors)
        meta = f.metadata()
    assert list(meta) == ["word2vec"]  # one entry: several are written in random order
    info = json.loads(meta["word2vec"])
    assert info["keys"] == model.keys and info["unit"] == model.config.unit


def test_save_load_round_trip(model, tmp_path):
    loaded = Word2Vec.load(model.save(tmp_path / "model"))
    assert np.array_equal(loaded.vectors, model.vectors)
    assert np.array_equal(loaded.output, model.output)
    assert loaded.keys == model.keys and loaded.vocab.keys == model.vocab.keys
    assert np.array_equal(loaded.vocab.counts, model.vocab.counts)
    assert identity(loaded.config) == identity(model.config)  # runtime knobs are not saved
    assert loaded.history == model.history and len(loaded.history) == model.config.epochs
    query = "a3" if model.config.unit == "word" else "the"
    assert np.array_equal(loaded.vector(query), model.vector(query))
    assert loaded.most_similar(query, k=5) == model.most_similar(query, k=5)


def test_saved_tokenizer_composes_multi_token_words(token_model, tokenizer, tmp_path):
    loaded = Word2Vec.load(token_model.save(tmp_path / "model"))
    assert (tmp_path / "model" / "tokenizer").is_dir()
    word = "statement"
    ids = tokenizer.encode_ordinary(" " + word)
    assert len(ids) > 1 and "Ġ" + word not in token_model.keys  # composed, not one token
    expected = np.mean([token_model.vector(i) for i in ids], axis=0)
    np.testing.assert_allclose(loaded.vector(word), expected, rtol=1e-6)
    np.testing.assert_allclose(loaded.vector("Statement"), expected, rtol=1e-6)  # lowercased
    assert loaded.most_similar(word, k=5) == token_model.most_similar(word, k=5)
    assert len(loaded.most_similar(word, k=5)) == 5


def test_load_rejects_another_format(word_model, tmp_path):
    out = word_model.save(tmp_path / "model")
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        Word2Vec.load(out)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def truncate(path: Path, keep: int = 60) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def wrong_shape(path: Path) -> None:
    with safe_open(path, "pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    tensors["output"] = tensors["output"][:, :-1].contiguous()
    save_file(tensors, path)


@pytest.mark.parametrize(
    "name, damage, problem",
    [
        ("config.json", lambda p: p.unlink(), "file not found"),
        ("config.json", truncate, "truncated or malformed JSON at line 4 column 14"),
        ("config.json", lambda p: p.write_text("[1, 2]"), "expected a JSON object, found array"),
        ("config.json", lambda p: edit_json(p, lambda d: d["config"].update(dim="16")),
         "config.dim = '16': expected int"),
        ("config.json", lambda p: edit_json(p, lambda d: d.update(history="low")),
         "'history' is not an array of numbers"),
        ("vocab.json", truncate, "truncated or malformed JSON"),
        ("vocab.json", lambda p: edit_json(p, lambda d: d["counts"].pop()),
         "16 keys but 15 counts"),
        ("vocab.json", lambda p: edit_json(p, lambda d: d.pop("keys")), "missing keys ['keys']"),
        ("vocab.json", lambda p: edit_json(p, lambda d: d.update(unit="token")),
         "unit 'token', but config.json says 'word'"),
        ("vocab.json", lambda p: edit_json(p, lambda d: d["keys"].__setitem__(1, d["keys"][0])),
         "'keys' holds duplicates"),
        ("model.safetensors", lambda p: p.unlink(), "file not found"),
        ("model.safetensors", truncate, "not a readable safetensors file (truncated or corrupt?)"),
        ("model.safetensors", wrong_shape,
         "tensor 'output' is torch.float32 [16, 15], expected float [16, 16]"),
    ],
)  # fmt: skip
def test_load_names_the_bad_file_and_the_problem(word_model, tmp_path, name, damage, problem):
    out = word_model.save(tmp_path / "model")
    damage(out / name)
    with pytest.raises(StageInputError) as err:
        Word2Vec.load(out)
    assert str(err.value).startswith(f"{out / name}: ")
    assert problem in str(err.value)


def test_load_checks_the_matrices_against_config_and_vocab(word_model, tmp_path):
    out = word_model.save(tmp_path / "model")
    edit_json(out / "config.json", lambda d: d["config"].update(dim=12))
    message = (
        f"{out / 'model.safetensors'}: tensor 'input' is torch.float32 [16, 16], expected float "
        "[16, 12] (16 keys in vocab.json, dim 12 in config.json)"
    )
    with pytest.raises(StageInputError, match=re.escape(message)):
        Word2Vec.load(out)


def test_load_rejects_token_keys_outside_the_tokenizer(token_model, tmp_path):
    out = token_model.save(tmp_path / "model")
    edit_json(out / "vocab.json", lambda d: d["keys"].__setitem__(0, 99999))
    with pytest.raises(StageInputError, match=r"token id 99999 is outside the vocabulary 0\.\.399"):
        Word2Vec.load(out)


def test_unknown_word(word_model, token_model):
    assert word_model.vector("zebra") is None
    assert word_model.vector(3) is None  # ids only address token units
    with pytest.raises(KeyError, match="zebra"):
        word_model.most_similar("zebra")
    with pytest.raises(KeyError, match="zebra"):
        word_model.analogy("a1", "zebra", "b1")
    # a token model composes any word of bytes it has seen: here only an unknown id has none
    assert token_model.vector(10**6) is None
    with pytest.raises(KeyError, match="1000000"):
        token_model.most_similar(10**6)


def test_capitalised_query_is_excluded_from_its_own_neighbours(word_model):
    assert word_model.most_similar("A1", k=3) == word_model.most_similar("a1", k=3)
