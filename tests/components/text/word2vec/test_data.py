"""word2vec's data path on hand-computed numbers: the encoded corpus, subsampling, negative
draws and shrunk windows."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from components.text.word2vec.data import (
    AliasTable,
    EncodedCorpus,
    _WriteBuffer,
    interleaved_batches,
    subsample,
    windows,
)
from components.text.word2vec.vocabulary import Vocabulary


def test_build_counts_lists_and_id_arrays_in_one_pass(tmp_path):
    sentences = [["a", "b", "a"], [], np.array([3, 3, 5], dtype=np.int32), [5], ["a"]]
    vocab, corpus = EncodedCorpus.build(iter(sentences), 1, None, tmp_path / "enc")
    assert dict(zip(vocab.keys, vocab.counts.tolist(), strict=True)) == {
        "a": 3, "b": 1, 3: 2, 5: 2,
    }  # fmt: skip
    assert (corpus.n_sentences, corpus.n_raw, corpus.n_distinct, corpus.top_count) == (5, 8, 4, 3)
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "encoded.json", "ids.i32", "sent.i32",
    ]  # fmt: skip


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def negatives(cdf: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return AliasTable(np.diff(cdf, prepend=0.0)).draw(shape, gen(seed)).numpy()


def test_alias_table_matches_an_uneven_distribution():
    p = np.random.default_rng(3).pareto(1.0, 50) + 1e-3
    p /= p.sum()
    drawn = AliasTable(p).draw((400_000,), gen(4)).numpy()
    freq = np.bincount(drawn, minlength=50) / drawn.size
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / drawn.size), (freq, p)


def test_negatives_follow_the_cdf():
    vocab = Vocabulary(["a", "b", "c", "d"], np.array([256, 81, 16, 1]))
    drawn = negatives(vocab.negative_cdf(), (40_000, 5), 0)
    assert drawn.shape == (40_000, 5)
    assert drawn.min() >= 0 and drawn.max() <= 3
    freq = np.bincount(drawn.ravel(), minlength=4) / drawn.size
    # 200k draws: the standard error of p = .64 is ~0.001
    assert np.abs(freq - [0.64, 0.27, 0.08, 0.01]).max() < 0.005, freq


def test_negatives_are_seeded():
    cdf = Vocabulary(["a", "b"], np.array([3, 1])).negative_cdf()
    first = negatives(cdf, (100, 5), 7)
    again = negatives(cdf, (100, 5), 7)
    assert np.array_equal(first, again)


def test_subsample_keeps_each_unit_with_its_probability():
    rng = np.random.default_rng(1)
    keep = np.array([0.2, 0.5, 1.0, 0.05])
    ids = rng.integers(0, 4, size=200_000)
    sent = np.arange(len(ids))  # sentence numbers double as positions here
    kept = subsample(*map(torch.from_numpy, (ids, sent, keep)), gen(2))
    ids_kept, sent_kept = (t.numpy() for t in kept)
    assert np.array_equal(ids_kept, ids[sent_kept])  # survivors stay aligned, in order
    assert np.all(np.diff(sent_kept) > 0)
    rate = np.bincount(ids_kept, minlength=4) / np.bincount(ids, minlength=4)
    np.testing.assert_allclose(rate, keep, atol=0.01)
    assert rate[2] == 1.0


def sentence_numbers(rng: np.random.Generator) -> np.ndarray:
    """Sentence number per position for sentences of 1..25 units (not contiguous numbers)."""
    lengths = np.concatenate([[1, 1, 2, 25], rng.integers(1, 26, size=400)])
    return np.repeat(np.arange(len(lengths)) * 3, lengths)


def rows(win) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(center, offsets, context, mask) per center, from one `Windows` or a list of them (one
    per radius); the width 2R of a batch gives its offsets -R..-1, 1..R."""
    out = []
    for group in win if isinstance(win, list) else [win]:
        assert group.context.shape == group.mask.shape == (len(group.centers), group.mask.shape[1])
        half = group.mask.shape[1] // 2
        offsets = np.concatenate([np.arange(-half, 0), np.arange(1, half + 1)])
        context, mask = group.context.numpy(), group.mask.numpy()
        for i, center in enumerate(group.centers.tolist()):
            out.append((center, offsets, context[i], mask[i]))
    return out


@pytest.mark.parametrize("window", [1, 2, 5])
def test_windows_shrink_within_the_sentence(window):
    sent = sentence_numbers(np.random.default_rng(window))
    n = len(sent)
    ids = np.arange(n)  # each unit its own id, so a context id is the position it came from
    radii = []
    found = rows(windows(torch.from_numpy(ids), torch.from_numpy(sent), window, gen(0)))
    assert sorted(center for center, *_ in found) == ids.tolist()  # every position once
    for center, offsets, context, mask in found:
        assert len(offsets) <= 2 * window
        pos = center + offsets
        inside = (pos >= 0) & (pos < n)
        inside[inside] &= sent[pos[inside]] == sent[center]
        assert np.array_equal(context[mask], pos[mask])
        # some radius r in 1..window explains the row exactly: a slot is on iff |offset| <= r
        # and the offset stays in the center's sentence
        fits = [r for r in range(1, window + 1) if
                np.array_equal(mask, (np.abs(offsets) <= r) & inside)]  # fmt: skip
        assert fits, (center, offsets, mask, inside)
        full = np.arange(center - window, center + window + 1)
        if full[0] >= 0 and full[-1] < n and (sent[full] == sent[center]).all():
            radii.append(int(np.abs(offsets[mask]).max()))  # the radius drawn for this center
    # the radius is uniform over 1..window (counted where the full window is in the sentence)
    assert len(radii) > 1000
    freq = np.bincount(radii, minlength=window + 1)[1:] / len(radii)
    np.testing.assert_allclose(freq, 1 / window, atol=0.05)


def test_windows_of_single_unit_sentences_are_empty():
    found = rows(windows(torch.tensor([4, 5, 6]), torch.tensor([0, 1, 2]), 3, gen(0)))
    assert sorted(center for center, *_ in found) == [4, 5, 6]
    assert not any(mask.any() for *_, mask in found)


def test_interleaved_batches_take_the_radius_groups_in_turn():
    ids = torch.arange(200) % 50
    groups = windows(ids, torch.arange(200) // 20, 3, gen(1))
    negatives = [torch.full((len(g), 2), r) for r, g in enumerate(groups, start=1)]
    sizes = [len(g) for g in groups]
    assert min(sizes) > 32 and max(sizes) <= 96  # 2 or 3 batches per group below
    got = list(interleaved_batches(groups, negatives, 32))
    radii = [batch.context.shape[1] // 2 for batch, _ in got]
    assert radii[:6] == [1, 2, 3, 1, 2, 3]  # in turn, not group after group
    for batch, negs in got:  # each batch keeps its own negatives
        assert len(negs) == len(batch) <= 32 and (negs == batch.context.shape[1] // 2).all()
    for r, group in enumerate(groups, start=1):  # every center exactly once, in order
        centers = torch.cat([b.centers for b, _ in got if b.context.shape[1] == 2 * r])
        assert torch.equal(centers, group.centers)


def test_encoded_corpus_drops_unknown_units_and_chunks_on_sentences(tmp_path):
    sentences = [["a", "b", "c"], ["c"], ["b", "a", "a", "b"], ["a"] * 7]
    vocab, corpus = EncodedCorpus.build(sentences, 3, None, tmp_path / "enc")  # "c": 2 times
    assert vocab.keys == ["a", "b"] and vocab.counts.tolist() == [10, 3]
    assert (corpus.n_positions, corpus.n_raw) == (13, 15)
    chunks = list(corpus.chunks(3))
    ids = np.concatenate([c[0] for c in chunks])
    sent = np.concatenate([c[1] for c in chunks])
    assert ids.tolist() == [0, 1, 1, 0, 0, 1] + [0] * 7
    assert sent.tolist() == [0, 0, 2, 2, 2, 2] + [3] * 7  # sentence 1 had no known unit
    # each chunk ends on a sentence boundary; a 7-unit sentence is cut
    # after at most one more chunk
    assert [c[1].tolist() for c in chunks[:2]] == [[0, 0, 2, 2, 2, 2], [3] * 6]


def test_encoded_corpus_remaps_across_chunks(tmp_path, monkeypatch):
    """Counts add up across the pass's write flushes, ids across the remap pass's chunks."""
    monkeypatch.setattr(EncodedCorpus, "REMAP_CHUNK", 4)
    monkeypatch.setattr(_WriteBuffer, "SIZE", 5)
    rng = np.random.default_rng(0)
    sentences = [[f"w{i}" for i in rng.zipf(1.5, size=n) % 30] for n in rng.integers(1, 9, 50)]
    vocab, corpus = EncodedCorpus.build(sentences, 3, 10, tmp_path / "enc")
    counts = Counter(w for s in sentences for w in s)
    want_vocab = Vocabulary.build(counts, 3, 10)
    assert vocab.keys == want_vocab.keys and np.array_equal(vocab.counts, want_vocab.counts)
    ids, sent = (np.concatenate(c) for c in zip(*corpus.chunks(1000), strict=True))
    index = vocab.index()
    want = [(index[w], n) for n, s in enumerate(sentences) for w in s if w in index]
    assert list(zip(ids.tolist(), sent.tolist(), strict=True)) == want


@pytest.mark.parametrize("group", [1 << 20, 2])  # sentences encoded together, or a few at once
def test_encoded_corpus_of_token_ids(tmp_path, monkeypatch, group):
    monkeypatch.setattr(_WriteBuffer, "SIZE", group)
    sentences = [
        np.zeros(0, dtype=np.int32),
        np.array([7, 9, 300, 12345, -1], dtype=np.int32),
        np.array([-1, -1]),
        np.array([300, 300, 300]),
    ]
    vocab, corpus = EncodedCorpus.build(sentences, 2, None, tmp_path / "enc")
    assert vocab.keys == [300] and isinstance(vocab.keys[0], int)
    assert (corpus.n_sentences, corpus.n_raw, corpus.n_distinct) == (4, 10, 4)
    ids, sent = next(corpus.chunks(100))
    assert ids.tolist() == [0, 0, 0, 0] and sent.tolist() == [1, 3, 3, 3]
