"""word2vec on planted structure, against gensim's readers, across save/load, kills and resumes,
and on bad input. Corpora are tiny and seeded, so every number here is reproducible on CPU."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors
from safetensors import safe_open
from safetensors.torch import save_file

from components.config import ConfigError
from components.stage import StageInputError
from components.text import word2vec
from components.text.bpe import ENDOFTEXT, BpeTokenizer, bytes_to_unicode
from components.text.word2vec import (
    DivergedError,
    EmptyCorpusError,
    Word2Vec,
    Word2VecConfig,
)
from tests.components.text import w2v_script

REPO = Path(__file__).resolve().parents[3]
DOCS = [topics[name] for name in sorted(topics)][:30]


def small_config(**changes) -> Word2VecConfig:
    base = dict(
        unit="word", dim=16, window=3, negative=5, sample=0.0, min_count=1, epochs=5,
        batch_size=64, workers=1, seed=1, device="cpu", progress=False,
    )  # fmt: skip
    return Word2VecConfig(**(base | changes))


def unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# ---- planted structure ----------------------------------------------------------------------


def two_clusters(seed: int = 0, n: int = 400) -> tuple[list[list[str]], list[str], list[str]]:
    """`n` sentences of 8 words, each sentence from one of two 8-word clusters only."""
    rng = np.random.default_rng(seed)
    a, b = [f"a{i}" for i in range(8)], [f"b{i}" for i in range(8)]
    sentences = [[str(w) for w in rng.choice((a, b)[s % 2], size=8)] for s in range(n)]
    return sentences, a, b


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_clusters_that_never_co_occur_separate(mode):
    sentences, a, b = two_clusters()
    model = Word2Vec.train(lambda: sentences, small_config(mode=mode))
    assert sorted(model.keys) == sorted(a + b)
    assert len(model.history) == 5 and model.history[-1] < model.history[0]
    assert_clusters_separate(model, a, b)


def assert_clusters_separate(model: Word2Vec, a: list[str], b: list[str]) -> None:
    va, vb = (unit_rows(np.stack([model.vector(w) for w in ws])) for ws in (a, b))
    off_diagonal = ~np.eye(len(a), dtype=bool)
    within = ((va @ va.T)[off_diagonal].mean() + (vb @ vb.T)[off_diagonal].mean()) / 2
    across = (va @ vb.T).mean()
    assert within > 0.8 and across < 0.5 and within - across > 0.5, (within, across)
    for cluster in (a, b):
        for word in cluster:
            neighbours = [w for w, _ in model.most_similar(word, k=len(cluster) - 1)]
            assert sorted(neighbours) == sorted(set(cluster) - {word}), (word, neighbours)


def countries_and_capitals(seed: int, pairs: int = 5) -> list[list[str]]:
    """country{i} and capital{i} share topic words t{i}x*; each role has its own marker words.
    So capital{i} - country{i} is one offset (capital markers - country markers) for every i."""
    rng = np.random.default_rng(seed)
    markers = {"country": ["nation", "flag", "border", "anthem"],
               "capital": ["city", "mayor", "street", "tram"]}  # fmt: skip
    sentences = []
    for _ in range(60):
        for i in range(pairs):
            topic = [f"t{i}x{j}" for j in range(4)]
            for role, words in markers.items():
                sentence = [f"{role}{i}", *rng.choice(words, 3), *rng.choice(topic, 3)]
                sentences.append([str(w) for w in rng.permutation(sentence)])
    return sentences


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_analogy_recovers_the_planted_relation(mode):
    sentences = countries_and_capitals(seed=0)
    model = Word2Vec.train(lambda: sentences, small_config(mode=mode, window=6))
    pairs = list(itertools.permutations(range(5), 2))
    for i, j in pairs:
        # without the offset, capital{i} is not even country{i}'s nearest word
        assert model.most_similar(f"country{i}", k=1)[0][0] != f"capital{i}"
        answer = model.analogy(f"country{j}", f"capital{j}", f"country{i}")
        assert answer[0][0] == f"capital{i}", (i, j, answer)
        back = model.analogy(f"capital{j}", f"country{j}", f"capital{i}")
        assert back[0][0] == f"country{i}", (i, j, back)


def test_queries_agree_with_gensim_on_the_same_vectors(tmp_path):
    sentences = countries_and_capitals(seed=1)
    model = Word2Vec.train(lambda: sentences, small_config(window=6))
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
    return BpeTokenizer.train(DOCS, vocab_size=400, special_tokens=[ENDOFTEXT])


@pytest.fixture(scope="module")
def token_model(tokenizer) -> Word2Vec:
    ids = [np.asarray(tokenizer.encode(d + ENDOFTEXT), dtype=np.int64) for d in DOCS]
    config = small_config(unit="token", min_count=2, epochs=2, batch_size=256)
    return Word2Vec.train(lambda: ids, config, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def word_model() -> Word2Vec:
    sentences, _, _ = two_clusters(seed=1)
    return Word2Vec.train(lambda: sentences, small_config(epochs=2))


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
    assert loaded.config == model.config
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
        ("config.json", truncate, "truncated or malformed JSON at line 5 column 5"),
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_fails_before_the_corpus_pass():
    passes = []

    def sentences():
        passes.append(1)
        return [["a", "b"]]

    with pytest.raises(ConfigError, match=r"^device = 'cuda': expected 'auto' or 'cpu': torch "
                       r"sees no CUDA device$"):  # fmt: skip
        Word2Vec.train(sentences, small_config(device="cuda"))
    assert passes == []


# ---- resume, determinism ----------------------------------------------------------------------


def run_script(work: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tests.components.text.w2v_script", str(work), str(out), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture
def script_chunks(monkeypatch):
    monkeypatch.setattr(word2vec, "CHUNK", w2v_script.CHUNK)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, script_chunks):
    work = tmp_path / "work"
    killed = run_script(work, tmp_path / "killed.npz", "--kill-in-epoch", "2")
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "killed.npz").exists()
    resumed = run_script(work, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1 of 3" in resumed.stderr  # epoch 1 is not retrained
    got = np.load(tmp_path / "resumed.npz")
    fresh, calls = w2v_script.train(None)
    assert [m["epoch"] for _, m in calls].count(2) > 1  # epoch 2 had several chunks: the kill
    assert np.array_equal(got["vectors"], fresh.vectors)  # was mid-epoch
    assert np.array_equal(got["output"], fresh.output)
    assert got["history"].tolist() == fresh.history
    # the on_metrics calls of epoch 1 were replayed from the checkpoint: the whole curve
    assert got["steps"].tolist() == [step for step, _ in calls]
    for key in ("loss", "lr", "epoch"):
        assert got[key].tolist() == [m[key] for _, m in calls], key


def test_resumed_run_replays_the_metrics_of_the_checkpointed_epochs(tmp_path, script_chunks):
    """on_metrics sees exactly the calls of an uninterrupted run: the same steps, values and
    types, the checkpointed epoch's calls first (replayed, not retrained)."""
    sentences, _, _ = two_clusters(seed=5, n=200)
    config = small_config(epochs=3)
    expected: list = []
    Word2Vec.train(lambda: sentences, config, on_metrics=lambda s, m: expected.append((s, m)))

    class Interrupt(Exception):
        pass

    def stop_in_epoch_2(step: int, metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        Word2Vec.train(lambda: sentences, config, work_dir=tmp_path, on_metrics=stop_in_epoch_2)
    trained = []
    chunk = word2vec._Trainer._chunk

    def counting_chunk(self, *args):
        trained.append(args[1])
        return chunk(self, *args)

    got: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(word2vec._Trainer, "_chunk", counting_chunk)
        model = Word2Vec.train(
            lambda: sentences, config, work_dir=tmp_path, on_metrics=lambda s, m: got.append((s, m))
        )
    per_epoch = [m["epoch"] for _, m in expected].count(1)
    assert per_epoch > 1 and len(trained) == 2 * per_epoch  # epoch 1 is not retrained
    assert got == expected
    assert [type(v) for _, m in got for v in m.values()] == [
        type(v) for _, m in expected for v in m.values()
    ]
    assert len(model.history) == 3


def test_unreadable_checkpoint_warns_and_starts_over(tmp_path, capsys):
    sentences, _, _ = two_clusters(seed=5, n=200)
    config = small_config(epochs=2)
    fresh = Word2Vec.train(lambda: sentences, config, work_dir=tmp_path)
    path = tmp_path / word2vec.CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    capsys.readouterr()
    again = Word2Vec.train(lambda: sentences, config, work_dir=tmp_path)
    err = capsys.readouterr().err
    assert f"{path}: unreadable checkpoint" in err and "starting over" in err
    assert "resuming" not in err
    assert np.array_equal(again.vectors, fresh.vectors) and again.history == fresh.history


@pytest.mark.parametrize("change", [{"dim": 12}, {"seed": 4}])
def test_checkpoint_of_another_config_is_not_resumed(tmp_path, script_chunks, change, capsys):
    work = tmp_path / "work"
    first, _ = w2v_script.train(work)  # a finished run: its checkpoint holds every epoch
    capsys.readouterr()
    again, _ = w2v_script.train(work, **change)
    assert "resuming" not in capsys.readouterr().err  # trained from scratch
    fresh, calls = w2v_script.train(None, **change)
    assert np.array_equal(again.vectors, fresh.vectors)
    assert again.history == fresh.history
    assert again.vectors.shape != first.vectors.shape or not np.allclose(
        again.vectors, first.vectors
    )
    resumed, replayed = w2v_script.train(work, **change)  # the same config does resume
    assert "resuming after epoch 3 of 3" in capsys.readouterr().err
    assert replayed == calls and np.array_equal(resumed.vectors, fresh.vectors)


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_results_do_not_depend_on_workers(mode):
    sentences, _, _ = two_clusters(seed=2)
    config = small_config(mode=mode, epochs=2, batch_size=128, sample=1e-2, compile="never")
    one = Word2Vec.train(lambda: sentences, config)
    two = Word2Vec.train(lambda: sentences, small_config(**(vars(config) | {"workers": 2})))
    np.testing.assert_allclose(two.vectors, one.vectors, rtol=0, atol=1e-6)
    np.testing.assert_allclose(two.output, one.output, rtol=0, atol=1e-6)
    np.testing.assert_allclose(two.history, one.history, rtol=1e-6)
    assert np.abs(one.vectors).max() > 0.1  # trained, not the near-zero initialisation


def test_compiled_training_is_deterministic_and_equals_eager_up_to_rounding():
    sentences, _, _ = two_clusters(seed=2)
    config = small_config(mode="cbow", epochs=2, batch_size=128, sample=1e-2)
    assert config.compiles()  # compile: auto takes CBOW's compiled step
    first = Word2Vec.train(lambda: sentences, config)
    assert np.array_equal(Word2Vec.train(lambda: sentences, config).vectors, first.vectors)
    eager = Word2Vec.train(lambda: sentences, small_config(**(vars(config) | {"compile": "never"})))
    assert not np.array_equal(eager.vectors, first.vectors)  # other rounding: another path ran
    np.testing.assert_allclose(first.vectors, eager.vectors, rtol=0, atol=1e-4)
    np.testing.assert_allclose(first.history, eager.history, rtol=1e-4)
    assert np.abs(first.vectors).max() > 0.1


@pytest.mark.parametrize(
    ("mode", "compile", "hogwild", "compiles"),
    [("cbow", "auto", False, True), ("skipgram", "auto", False, False),
     ("skipgram", "auto", True, True), ("skipgram", "always", False, True),
     ("cbow", "never", True, False)],
)  # fmt: skip
def test_compile_auto_means_cbow_or_hogwild(mode, compile, hogwild, compiles):
    config = Word2VecConfig(mode=mode, compile=compile, hogwild=hogwild)
    assert config.compiles() is compiles


@pytest.mark.parametrize(("mode", "compile"), [("skipgram", "never"), ("cbow", "auto")])
def test_hogwild_threads_train_every_chunk_at_once(mode, compile, script_chunks, monkeypatch):
    """Several chunks per epoch, trained by two threads at once on the shared matrices:
    the structure is learnt, metrics still arrive in corpus order, and training ends at one
    thread's loss."""
    threads, calls, meet = set(), itertools.count(), threading.Barrier(2, timeout=60)
    chunk = word2vec._Trainer._chunk

    def recording_chunk(self, *args):
        threads.add(threading.current_thread().name)
        if next(calls) < 2:  # the first two chunks run at once, or this times out
            meet.wait()
        return chunk(self, *args)

    monkeypatch.setattr(word2vec._Trainer, "_chunk", recording_chunk)
    sentences, a, b = two_clusters(seed=4, n=2400)  # 19,200 positions: 10 chunks of 1,920
    config = small_config(mode=mode, batch_size=128, compile=compile, hogwild=True, workers=2)
    steps: list[int] = []
    model = Word2Vec.train(lambda: sentences, config, on_metrics=lambda step, m: steps.append(step))
    assert len(threads) == 2 and threading.current_thread().name not in threads
    assert_clusters_separate(model, a, b)
    config.hogwild, one_steps = False, []
    one = Word2Vec.train(
        lambda: sentences, config, on_metrics=lambda step, m: one_steps.append(step)
    )
    assert len(one_steps) == 50 and steps == one_steps  # every chunk of 5 epochs, in order
    # 16 words: the threads' updates collide all the time, which slows the first epochs only
    assert model.history == sorted(model.history, reverse=True)
    assert model.history[-1] == pytest.approx(one.history[-1], rel=0.02)


def test_same_seed_same_vectors_other_seed_other_vectors():
    sentences, _, _ = two_clusters(seed=3)
    config = small_config(epochs=1)
    first = Word2Vec.train(lambda: sentences, config)
    assert np.array_equal(Word2Vec.train(lambda: sentences, config).vectors, first.vectors)
    other = Word2Vec.train(lambda: sentences, small_config(epochs=1, seed=2))
    assert not np.allclose(other.vectors, first.vectors)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", [[], [[], []], [np.array([], dtype=np.int32)]])
def test_empty_token_stream(corpus):
    with pytest.raises(EmptyCorpusError, match="empty token stream"):
        Word2Vec.train(lambda: corpus, small_config())


def test_vocabulary_empty_after_min_count():
    sentences = [["a", "b", "a"], ["c"]]
    with pytest.raises(EmptyCorpusError, match=r"min_count = 3\b") as err:
        Word2Vec.train(lambda: sentences, small_config(min_count=3))
    assert "2 times" in str(err.value)  # the most frequent unit, "a", occurs twice


@pytest.mark.parametrize("hogwild", [False, True])
def test_divergence_is_an_error_naming_the_knobs_not_nan_vectors(tmp_path, hogwild):
    sentences, _, _ = two_clusters()
    config = small_config(alpha=1e4, update_cap=None, epochs=3, hogwild=hogwild, workers=2)
    with pytest.raises(DivergedError, match=r"diverged in epoch 1 .*alpha = 10000.0, "
                       r"update_cap = None, batch_size = 64; lower one of them"):  # fmt: skip
        Word2Vec.train(lambda: sentences, config, work_dir=tmp_path)
    assert not (tmp_path / word2vec.CHECKPOINT).exists()  # no epoch of NaN weights was saved


def test_ids_outside_the_vocabulary_stop_training_before_a_step(monkeypatch):
    """The compiled step indexes the matrices unchecked: a corrupt id must never reach it."""
    chunks = word2vec.EncodedCorpus.chunks

    def corrupt(self, size):
        for ids, sent in chunks(self, size):
            ids[-1] = 10_000
            yield ids, sent

    monkeypatch.setattr(word2vec.EncodedCorpus, "chunks", corrupt)
    steps = []
    monkeypatch.setattr(word2vec.SgdKernel, "step", lambda *args: steps.append(args))
    sentences, _, _ = two_clusters()
    with pytest.raises(ValueError, match=r"ids 0\.\.10000 outside the vocabulary of 16"):
        Word2Vec.train(lambda: sentences, small_config())
    assert steps == []


@pytest.mark.parametrize(
    "key, value",
    [("window", 0), ("dim", 0), ("negative", 0), ("min_count", 0), ("epochs", 0),
     ("alpha", 0.0), ("sample", -1e-3), ("batch_size", 0), ("workers", -1)],
)  # fmt: skip
def test_config_out_of_range_names_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        Word2VecConfig(**{key: value})
    assert err.value.key == key
    assert str(err.value).startswith(f"{key} = {value!r}: expected")


def test_unknown_word(word_model, token_model):
    assert word_model.vector("zebra") is None
    assert word_model.vector(3) is None  # ids only address token units
    with pytest.raises(KeyError, match="zebra"):
        word_model.most_similar("zebra")
    with pytest.raises(KeyError, match="zebra"):
        word_model.analogy("a1", "zebra", "b1")
    # a token model composes any word from bytes; only an id outside the vocabulary is unknown
    assert token_model.vector(10**6) is None
    with pytest.raises(KeyError, match="1000000"):
        token_model.most_similar(10**6)


def test_capitalised_query_is_excluded_from_its_own_neighbours(word_model):
    assert word_model.most_similar("A1", k=3) == word_model.most_similar("a1", k=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_cuda_trains_the_same_structure(mode):
    """The CUDA path (same code, device chosen by config) learns what the CPU path learns."""
    sentences, a, b = two_clusters()
    cpu = Word2Vec.train(lambda: sentences, small_config(mode=mode))
    gpu = Word2Vec.train(lambda: sentences, small_config(mode=mode, device="cuda"))
    assert gpu.keys == cpu.keys
    assert abs(gpu.history[-1] - cpu.history[-1]) < 0.05 * cpu.history[-1]
    va, vb = (unit_rows(np.stack([gpu.vector(w) for w in ws])) for ws in (a, b))
    assert (va @ va.T).mean() - (va @ vb.T).mean() > 0.5
