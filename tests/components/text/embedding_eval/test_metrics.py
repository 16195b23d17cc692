"""Word similarity and 3CosAdd analogies against gensim's evaluation on the same vectors, and on
planted vectors."""

from pathlib import Path

import gensim
import numpy as np
import pytest
from gensim.models import KeyedVectors

from components.stage import StageInputError
from components.text.embedding_eval.data import Analogy, WordPair, read_analogies, read_word_pairs
from components.text.embedding_eval.metrics import SectionScore, analogies, word_similarity
from tests.components.text.embedding_eval.planted import ArrayVectors, planted

GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"


def keyed_vectors(vectors: ArrayVectors) -> KeyedVectors:
    kv = KeyedVectors(vectors.matrix.shape[1])
    kv.add_vectors(vectors.words, vectors.matrix)  # same key order = same frequency order
    return kv


def structured_vectors(case_variants: bool) -> ArrayVectors:
    """Vectors for most words of the real test sets (lowercased), ~5% left out, plus fillers.

    Analogy pairs are planted: the second word of a pair is the first plus its section's offset
    plus noise, where a word has no vector yet. Words in several pairs keep their first vector,
    so 3CosAdd is right on part of the questions only (a check at 0% accuracy proves little).
    With `case_variants`, some words also get a Capitalised variant with its own vector.
    """
    rng = np.random.default_rng(0)
    dim = 24
    questions = read_analogies(GENSIM_DATA / "questions-words.txt")
    pairs = [
        *read_word_pairs(GENSIM_DATA / "wordsim353.tsv"),
        *read_word_pairs(GENSIM_DATA / "simlex999.txt"),
    ]
    words = sorted(
        {w.lower() for q in questions for w in q.words}
        | {w.lower() for p in pairs for w in (p.word1, p.word2)}
    )
    words = [w for w in words if rng.random() > 0.05] + [f"filler{i}" for i in range(300)]
    if case_variants:
        words += [w.capitalize() for w in words if rng.random() < 0.1]
    table: dict[str, np.ndarray] = {}
    offsets: dict[str, np.ndarray] = {}
    for q in questions:
        offset = offsets.setdefault(q.section, rng.normal(size=dim))
        for x, y in ((q.a.lower(), q.b.lower()), (q.c.lower(), q.expected.lower())):
            if y not in table:
                base = table.setdefault(x, rng.normal(size=dim))
                table[y] = base + offset + rng.normal(scale=0.8, size=dim)
    vectors = {w: table.get(w.lower(), rng.normal(size=dim)) for w in words}
    vectors |= {w: rng.normal(size=dim) for w in words if w[0].isupper()}
    counts = rng.integers(1, 10_000, size=len(words))
    order = sorted(range(len(words)), key=lambda i: (-counts[i], words[i]))
    ordered = [words[i] for i in order]
    return ArrayVectors(ordered, np.stack([vectors[w] for w in ordered]))


@pytest.fixture(scope="module")
def lower_vectors() -> ArrayVectors:
    return structured_vectors(case_variants=False)


@pytest.fixture(scope="module")
def question_subset(tmp_path_factory) -> Path:
    """Every 4th question of the real questions-words.txt (all 14 sections), to keep gensim fast."""
    lines, kept = (GENSIM_DATA / "questions-words.txt").read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith(":") or i % 4 == 0:
            kept.append(line)
    path = tmp_path_factory.mktemp("analogy") / "questions-subset.txt"
    path.write_text("\n".join(kept) + "\n")
    return path


@pytest.mark.parametrize("name", ["wordsim353.tsv", "simlex999.txt"])
def test_word_similarity_matches_gensim(lower_vectors, name):
    path = GENSIM_DATA / name
    ours = word_similarity(lower_vectors, read_word_pairs(path))
    pearson, spearman, oov_percent = keyed_vectors(lower_vectors).evaluate_word_pairs(str(path))
    assert ours.oov_pairs > 0 and ours.pairs + ours.oov_pairs == len(read_word_pairs(path))
    assert ours.spearman == pytest.approx(spearman.statistic, abs=1e-6)
    assert ours.pearson == pytest.approx(pearson.statistic, abs=1e-6)
    assert ours.oov_rate == pytest.approx(oov_percent / 100, abs=1e-12)


@pytest.mark.parametrize("case_variants, lowercase", [(False, True), (True, True), (True, False)])
def test_analogies_match_gensim(lower_vectors, question_subset, case_variants, lowercase):
    vectors = structured_vectors(True) if case_variants else lower_vectors
    ours = analogies(vectors, read_analogies(question_subset), 2000, lowercase=lowercase)
    score, sections = keyed_vectors(vectors).evaluate_word_analogies(
        str(question_subset), restrict_vocab=2000, case_insensitive=lowercase
    )
    total = sections[-1]
    assert ours.correct == len(total["correct"])
    assert ours.total == len(total["correct"]) + len(total["incorrect"])
    assert ours.accuracy == pytest.approx(score, abs=1e-12)
    assert [(s.section, s.correct, s.total) for s in ours.sections] == [
        (s["section"], len(s["correct"]), len(s["correct"]) + len(s["incorrect"]))
        for s in sections[:-1]
    ]
    # Not a degenerate comparison: some right, some wrong, some out of vocabulary.
    assert 0.1 < ours.accuracy < 0.9 and 0 < ours.oov_rate < 1


def test_analogy_oov_rate_matches_gensim_definition(lower_vectors, question_subset):
    questions = read_analogies(question_subset)
    ours = analogies(lower_vectors, questions, 2000)
    known = set(lower_vectors.words[:2000])
    skipped = sum(any(w.lower() not in known for w in q.words) for q in questions)
    assert ours.oov_rate == skipped / len(questions)
    assert ours.total == len(questions) - skipped


def test_planted_analogy():
    questions = [
        Analogy("royalty", "man", "king", "woman", "queen"),
        Analogy("royalty", "Man", "King", "Woman", "Queen"),  # lowercased before lookup
        Analogy("royalty", "man", "king", "woman", "prince"),  # wrong answer expected
        Analogy("royalty", "man", "king", "woman", "empress"),  # out of vocabulary
        Analogy("fruit", "apple", "pear", "apple", "pear"),  # only answer "pear" is an input
    ]
    result = analogies(planted(), questions)
    assert (result.correct, result.total, result.oov_rate) == (2, 4, 0.2)
    assert result.accuracy == 0.5
    assert result.sections == [SectionScore("royalty", 2, 3), SectionScore("fruit", 0, 1)]
    assert analogies(planted(), questions, lowercase=False).total == 3  # "Man" etc. unknown


def test_restrict_vocab_limits_answers_and_questions():
    # Within the top 3 words (king, man, woman) "queen" is out of vocabulary: nothing answered.
    result = analogies(planted(), [Analogy("s", "man", "king", "woman", "queen")], 3)
    assert (result.total, result.oov_rate, result.accuracy) == (0, 1.0, 0.0)


def test_word_similarity_planted_and_too_few_pairs():
    pairs = [
        WordPair("king", "queen", 9.0),
        WordPair("king", "prince", 8.0),
        WordPair("apple", "man", 1.0),
        WordPair("apple", "unicorn", 5.0),
    ]
    result = word_similarity(planted(), pairs)
    assert (result.pairs, result.oov_pairs, result.oov_rate) == (3, 1, 0.25)
    # cosines 0.5, ~0.99, 0.0: ranks (2, 3, 1) against gold (3, 2, 1)
    assert result.spearman == pytest.approx(0.5)
    with pytest.raises(StageInputError, match="only 1 of 2 word pairs"):
        word_similarity(planted(), pairs[2:])
