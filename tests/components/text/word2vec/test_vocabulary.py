"""word2vec's vocabulary on hand-computed numbers: ordering, min_count/max_vocab, the
subsampling keep probabilities and the negative sampling distribution."""

from __future__ import annotations

from collections import Counter

import numpy as np

from components.text.word2vec.vocabulary import Vocabulary

COUNTS = Counter({"the": 64, "cat": 16, "sat": 9, "a": 7, "mat": 4, "on": 4, "x": 1})


def test_build_orders_by_count_then_key_and_applies_min_count():
    vocab = Vocabulary.build(COUNTS, min_count=2, max_vocab=None)
    assert vocab.keys == ["the", "cat", "sat", "a", "mat", "on"]  # "mat" < "on" at count 4
    assert vocab.counts.tolist() == [64, 16, 9, 7, 4, 4]
    assert vocab.counts.dtype == np.int64
    assert vocab.total == 104  # every count but the dropped "x"
    assert vocab.index() == {"the": 0, "cat": 1, "sat": 2, "a": 3, "mat": 4, "on": 5}


def test_build_max_vocab_keeps_the_most_frequent():
    vocab = Vocabulary.build(COUNTS, min_count=1, max_vocab=3)
    assert vocab.keys == ["the", "cat", "sat"]
    assert Vocabulary.build(COUNTS, min_count=5, max_vocab=10).keys == ["the", "cat", "sat", "a"]
    assert len(Vocabulary.build(COUNTS, min_count=65, max_vocab=None)) == 0


def test_build_orders_token_ids_numerically_on_ties():
    vocab = Vocabulary.build(Counter({10: 3, 2: 3, 7: 5, 300: 1}), min_count=1, max_vocab=None)
    assert vocab.keys == [7, 2, 10, 300]


def test_keep_probabilities_by_hand():
    vocab = Vocabulary(["the", "cat", "sat", "mat", "x"], np.array([64, 16, 9, 10, 1]))
    assert vocab.total == 100
    # f = count / 100; keep = min(1, (sqrt(f / sample) + 1) * sample / f)
    # sample 0.01: the f=.64 -> (8+1)*.01/.64; cat f=.16 -> (4+1)*.01/.16; sat f=.09 -> 4*.01/.09
    # mat f=.10 -> (sqrt(10)+1)*.1 = 0.41623; x f=.01 -> (1+1)*.01/.01 = 2 -> 1
    keep = vocab.keep_probabilities(0.01)
    expected = [0.140625, 0.3125, 0.04 / 0.09, 0.1 * (10**0.5 + 1), 1.0]
    np.testing.assert_allclose(keep, expected, rtol=1e-12)
    assert keep.dtype == np.float64
    # sample 0.04: the -> (4+1)*.04/.64 = .3125; cat -> (2+1)*.04/.16 = .75; sat -> > 1
    np.testing.assert_allclose(vocab.keep_probabilities(0.04), [0.3125, 0.75, 1, 1, 1], rtol=1e-12)


def test_sample_zero_keeps_everything():
    vocab = Vocabulary(["the", "x"], np.array([10**6, 1]))
    assert vocab.keep_probabilities(0).tolist() == [1.0, 1.0]


def test_negative_cdf_is_unigram_to_the_three_quarters():
    # 256**.75 = 64, 81**.75 = 27, 16**.75 = 8, 1**.75 = 1: weights sum to exactly 100
    vocab = Vocabulary(["a", "b", "c", "d"], np.array([256, 81, 16, 1]))
    np.testing.assert_allclose(vocab.negative_cdf(), [0.64, 0.91, 0.99, 1.0], rtol=1e-12)
    counts = np.array([64, 16, 9, 7, 4, 4])
    weights = counts**0.75
    np.testing.assert_allclose(
        Vocabulary(list("abcdef"), counts).negative_cdf(), np.cumsum(weights / weights.sum())
    )
    assert Vocabulary(list("abcdef"), counts).negative_cdf()[-1] == 1.0
    np.testing.assert_allclose(vocab.negative_cdf(power=1.0), np.cumsum([256, 81, 16, 1]) / 354)
