"""word2vec training on planted structure, across kills and resumes, threads and compiled steps,
and on bad input. Corpora are tiny and seeded, so every number here is reproducible on CPU."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import ConfigError
from components.text.word2vec import trainer
from components.text.word2vec.trainer import DivergedError, EmptyCorpusError, train_word2vec
from tests.components.text.word2vec import train_script
from tests.components.text.word2vec.planted import (
    assert_clusters_separate,
    countries_and_capitals,
    small_config,
    two_clusters,
    unit_rows,
)

REPO = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_clusters_that_never_co_occur_separate(mode):
    sentences, a, b = two_clusters()
    model = train_word2vec(lambda: sentences, small_config(mode=mode))
    assert sorted(model.keys) == sorted(a + b)
    assert len(model.history) == 5 and model.history[-1] < model.history[0]
    assert_clusters_separate(model, a, b)


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_analogy_recovers_the_planted_relation(mode):
    sentences = countries_and_capitals(seed=0)
    model = train_word2vec(lambda: sentences, small_config(mode=mode, window=6))
    pairs = list(itertools.permutations(range(5), 2))
    for i, j in pairs:
        # without the offset, capital{i} is not even country{i}'s nearest word
        assert model.most_similar(f"country{i}", k=1)[0][0] != f"capital{i}"
        answer = model.analogy(f"country{j}", f"capital{j}", f"country{i}")
        assert answer[0][0] == f"capital{i}", (i, j, answer)
        back = model.analogy(f"capital{j}", f"country{j}", f"capital{i}")
        assert back[0][0] == f"country{i}", (i, j, back)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_fails_before_the_corpus_pass():
    passes = []

    def sentences():
        passes.append(1)
        return [["a", "b"]]

    with pytest.raises(ConfigError, match=r"^device = 'cuda': expected an available device "
                       r"\(CUDA is not available\)$"):  # fmt: skip
        train_word2vec(sentences, small_config(device="cuda"))
    assert passes == []


# ---- resume, determinism ----------------------------------------------------------------------


def run_script(work: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "tests.components.text.word2vec.train_script",
        str(work),
        str(out),
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture
def script_chunks(monkeypatch):
    monkeypatch.setattr(trainer, "CHUNK", train_script.CHUNK)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, script_chunks):
    work = tmp_path / "work"
    killed = run_script(work, tmp_path / "killed.npz", "--kill-in-epoch", "2")
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "killed.npz").exists()
    resumed = run_script(work, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1 of 3" in resumed.stderr  # epoch 1 is not retrained
    got = np.load(tmp_path / "resumed.npz")
    fresh, calls = train_script.train(None)
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
    train_word2vec(lambda: sentences, config, on_metrics=lambda s, m: expected.append((s, m)))

    class Interrupt(Exception):
        pass

    def stop_in_epoch_2(step: int, metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_word2vec(lambda: sentences, config, work_dir=tmp_path, on_metrics=stop_in_epoch_2)
    trained = []
    chunk = trainer._Trainer._chunk

    def counting_chunk(self, *args):
        trained.append(args[1])
        return chunk(self, *args)

    got: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer._Trainer, "_chunk", counting_chunk)
        model = train_word2vec(
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
    fresh = train_word2vec(lambda: sentences, config, work_dir=tmp_path)
    path = tmp_path / trainer.CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    capsys.readouterr()
    again = train_word2vec(lambda: sentences, config, work_dir=tmp_path)
    err = capsys.readouterr().err
    assert f"{path}: unreadable checkpoint" in err and "starting over" in err
    assert "resuming" not in err
    assert np.array_equal(again.vectors, fresh.vectors) and again.history == fresh.history


@pytest.mark.parametrize("change", [{"dim": 12}, {"seed": 4}])
def test_checkpoint_of_another_config_is_not_resumed(tmp_path, script_chunks, change, capsys):
    work = tmp_path / "work"
    first, _ = train_script.train(work)  # a finished run: its checkpoint holds every epoch
    capsys.readouterr()
    again, _ = train_script.train(work, **change)
    assert "resuming" not in capsys.readouterr().err  # trained from scratch
    fresh, calls = train_script.train(None, **change)
    assert np.array_equal(again.vectors, fresh.vectors)
    assert again.history == fresh.history
    assert again.vectors.shape != first.vectors.shape or not np.allclose(
        again.vectors, first.vectors
    )
    resumed, replayed = train_script.train(work, **change)  # the same config does resume
    assert "resuming after epoch 3 of 3" in capsys.readouterr().err
    assert replayed == calls and np.array_equal(resumed.vectors, fresh.vectors)


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_results_do_not_depend_on_workers(mode):
    sentences, _, _ = two_clusters(seed=2)
    config = small_config(mode=mode, epochs=2, batch_size=128, sample=1e-2, compile="never")
    one = train_word2vec(lambda: sentences, config)
    two = train_word2vec(lambda: sentences, small_config(**(vars(config) | {"workers": 2})))
    np.testing.assert_allclose(two.vectors, one.vectors, rtol=0, atol=1e-6)
    np.testing.assert_allclose(two.output, one.output, rtol=0, atol=1e-6)
    np.testing.assert_allclose(two.history, one.history, rtol=1e-6)
    assert np.abs(one.vectors).max() > 0.1  # trained, not the near-zero initialisation


def test_compiled_training_is_deterministic_and_equals_eager_up_to_rounding():
    sentences, _, _ = two_clusters(seed=2)
    config = small_config(mode="cbow", epochs=2, batch_size=128, sample=1e-2)
    assert config.compiles()  # compile: auto takes CBOW's compiled step
    first = train_word2vec(lambda: sentences, config)
    assert np.array_equal(train_word2vec(lambda: sentences, config).vectors, first.vectors)
    eager = train_word2vec(lambda: sentences, small_config(**(vars(config) | {"compile": "never"})))
    assert not np.array_equal(eager.vectors, first.vectors)  # other rounding: another path ran
    np.testing.assert_allclose(first.vectors, eager.vectors, rtol=0, atol=1e-4)
    np.testing.assert_allclose(first.history, eager.history, rtol=1e-4)
    assert np.abs(first.vectors).max() > 0.1


@pytest.mark.parametrize(("mode", "compile"), [("skipgram", "never"), ("cbow", "auto")])
def test_hogwild_threads_train_every_chunk_at_once(mode, compile, script_chunks, monkeypatch):
    """Several chunks per epoch, trained by two threads at once on the shared matrices:
    the structure is learnt, metrics still arrive in corpus order, and training ends at one
    thread's loss."""
    threads, calls, meet = set(), itertools.count(), threading.Barrier(2, timeout=60)
    chunk = trainer._Trainer._chunk

    def recording_chunk(self, *args):
        threads.add(threading.current_thread().name)
        if next(calls) < 2:  # the first two chunks run at once, or this times out
            meet.wait()
        return chunk(self, *args)

    monkeypatch.setattr(trainer._Trainer, "_chunk", recording_chunk)
    sentences, a, b = two_clusters(seed=4, n=2400)  # 19,200 positions: 10 chunks of 1,920
    config = small_config(mode=mode, batch_size=128, compile=compile, hogwild=True, workers=2)
    steps: list[int] = []
    model = train_word2vec(lambda: sentences, config, on_metrics=lambda step, m: steps.append(step))
    assert len(threads) == 2 and threading.current_thread().name not in threads
    assert_clusters_separate(model, a, b)
    config.hogwild, one_steps = False, []
    one = train_word2vec(
        lambda: sentences, config, on_metrics=lambda step, m: one_steps.append(step)
    )
    assert len(one_steps) == 50 and steps == one_steps  # every chunk of 5 epochs, in order
    # 16 words: the threads' updates collide all the time, which slows the first epochs only
    assert model.history == sorted(model.history, reverse=True)
    assert model.history[-1] == pytest.approx(one.history[-1], rel=0.02)


def test_same_seed_same_vectors_other_seed_other_vectors():
    sentences, _, _ = two_clusters(seed=3)
    config = small_config(epochs=1)
    first = train_word2vec(lambda: sentences, config)
    assert np.array_equal(train_word2vec(lambda: sentences, config).vectors, first.vectors)
    other = train_word2vec(lambda: sentences, small_config(epochs=1, seed=2))
    assert not np.allclose(other.vectors, first.vectors)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", [[], [[], []], [np.array([], dtype=np.int32)]])
def test_empty_token_stream(corpus):
    with pytest.raises(EmptyCorpusError, match="empty token stream"):
        train_word2vec(lambda: corpus, small_config())


def test_vocabulary_empty_after_min_count():
    sentences = [["a", "b", "a"], ["c"]]
    with pytest.raises(EmptyCorpusError, match=r"min_count = 3\b") as err:
        train_word2vec(lambda: sentences, small_config(min_count=3))
    assert "2 times" in str(err.value)  # the most frequent unit, "a", occurs twice


@pytest.mark.parametrize("hogwild", [False, True])
def test_divergence_is_an_error_naming_the_knobs_not_nan_vectors(tmp_path, hogwild):
    sentences, _, _ = two_clusters()
    config = small_config(alpha=1e4, update_cap=None, epochs=3, hogwild=hogwild, workers=2)
    with pytest.raises(DivergedError, match=r"diverged in epoch 1 .*alpha = 10000.0, "
                       r"update_cap = None, batch_size = 64; lower one of them"):  # fmt: skip
        train_word2vec(lambda: sentences, config, work_dir=tmp_path)
    assert not (tmp_path / trainer.CHECKPOINT).exists()  # no epoch of NaN weights was saved


def test_ids_outside_the_vocabulary_stop_training_before_a_step(monkeypatch):
    """The compiled step indexes the matrices unchecked: a corrupt id must never reach it."""
    chunks = trainer.EncodedCorpus.chunks

    def corrupt(self, size):
        for ids, sent in chunks(self, size):
            ids[-1] = 10_000
            yield ids, sent

    monkeypatch.setattr(trainer.EncodedCorpus, "chunks", corrupt)
    steps = []
    monkeypatch.setattr(trainer.SgdKernel, "step", lambda *args: steps.append(args))
    sentences, _, _ = two_clusters()
    with pytest.raises(ValueError, match=r"ids 0\.\.10000 outside the vocabulary of 16"):
        train_word2vec(lambda: sentences, small_config())
    assert steps == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_cuda_trains_the_same_structure(mode):
    """The CUDA path (same code, device chosen by config) learns what the CPU path learns."""
    sentences, a, b = two_clusters()
    cpu = train_word2vec(lambda: sentences, small_config(mode=mode))
    gpu = train_word2vec(lambda: sentences, small_config(mode=mode, device="cuda"))
    assert gpu.keys == cpu.keys
    assert abs(gpu.history[-1] - cpu.history[-1]) < 0.05 * cpu.history[-1]
    va, vb = (unit_rows(np.stack([gpu.vector(w) for w in ws])) for ws in (a, b))
    assert (va @ va.T).mean() - (va @ vb.T).mean() > 0.5
