import sys
import types
from pathlib import Path

import gensim
import numpy as np
import pytest
from gensim.models import KeyedVectors

from components.config import ConfigError, build
from components.stage import StageInputError, StageIO
from components.text.embedding_eval import (
    STAGE,
    EmbeddingEvalConfig,
    SectionScore,
    analogies,
    nearest_neighbours,
    neighbours_table,
    pca_plot,
    word_similarity,
)
from components.text.eval_files import Analogy, WordPair, read_analogies, read_word_pairs

GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ArrayVectors:
    """WordVectors over a fixed table; `words` are in descending frequency order."""

    def __init__(self, words: list[str], matrix: np.ndarray):
        self.words, self.matrix = words, matrix.astype(np.float32)
        self.index = {w: i for i, w in reversed(list(enumerate(words)))}

    def vector(self, word: str) -> np.ndarray | None:
        i = self.index.get(word)
        return None if i is None else self.matrix[i]

    def vocabulary(self, top_n: int | None = None) -> tuple[list[str], np.ndarray]:
        return self.words[:top_n], self.matrix[:top_n]


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


def planted() -> ArrayVectors:
    """royal/male/female/fruit axes: king - man + woman = queen exactly."""
    royal, male, female, fruit = np.eye(4)
    table = {
        "king": royal + male,
        "man": male,
        "woman": female,
        "queen": royal + female,
        "apple": fruit,
        "prince": royal + 0.9 * male + 0.1 * fruit,
        "pear": fruit + 0.05 * royal,
    }
    return ArrayVectors(list(table), np.stack(list(table.values())))


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


def test_nearest_neighbours_and_tables():
    rows = nearest_neighbours(planted(), ["king", "unicorn", "apple"], k=2)
    assert [probe for probe, _ in rows] == ["king", "unicorn", "apple"]
    king = rows[0][1]
    assert [w for w, _ in king] == ["prince", "man"]
    assert king[0][1] == pytest.approx(1.9 / np.sqrt(2 * 1.82))
    assert king[1][1] == pytest.approx(np.sqrt(0.5))
    assert rows[1][1] == []
    assert [w for w, _ in rows[2][1]] == ["pear", "prince"]

    markdown = neighbours_table(rows).splitlines()
    assert markdown[:2] == ["| probe | nearest neighbours (cosine) |", "| --- | --- |"]
    assert markdown[2] == "| king | prince (0.996), man (0.707) |"
    assert markdown[3] == "| unicorn | *not in the model* |"
    tsv = neighbours_table(rows, "tsv").splitlines()
    assert tsv[0] == "probe\trank\tword\tcosine"
    assert tsv[1:3] == ["king\t1\tprince\t0.9959", "king\t2\tman\t0.7071"]
    assert len(tsv) == 5  # header + 2 + 0 + 2
    piped = [("a|b", [("c|d", 1.0)])]
    assert neighbours_table(piped).splitlines()[2] == "| a\\|b | c\\|d (1.000) |"


def test_pca_plot_writes_png(tmp_path):
    path = pca_plot(planted(), 5, tmp_path / "projection.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    with pytest.raises(StageInputError, match="at least 2 words"):
        pca_plot(planted(), 1, tmp_path / "one.png")


def test_config_defaults_and_validation():
    config = build(EmbeddingEvalConfig, {})
    assert set(config.similarity) == {"wordsim353", "simlex999"}
    assert config.analogy == "pkg:gensim/test/test_data/questions-words.txt"
    assert (config.restrict_vocab, config.plot_words, config.neighbours) == (30000, 200, 8)
    assert build(EmbeddingEvalConfig, {"analogy": None, "similarity": {}}).analogy is None
    with pytest.raises(ConfigError, match="similarity = 'word sim': expected names"):
        build(EmbeddingEvalConfig, {"similarity": {"word sim": "x.tsv"}})
    with pytest.raises(ConfigError, match="restrict_vocab = 0"):
        build(EmbeddingEvalConfig, {"restrict_vocab": 0})


def test_stage_run_with_a_stand_in_model(tmp_path, monkeypatch):
    """_run's wiring, with a stand-in for components.text.word2vec (not part of this module)."""
    model = planted()
    stand_in = types.ModuleType("components.text.word2vec")
    stand_in.Word2Vec = types.SimpleNamespace(load=lambda path: model)
    monkeypatch.setitem(sys.modules, "components.text.word2vec", stand_in)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("king\tqueen\t9\nking\tprince\t8\napple\tman\t1\napple\tunicorn\t5\n")
    questions = tmp_path / "questions.txt"
    questions.write_text(": royalty\nman king woman queen\nman king woman empress\n")
    params = {"similarity": {"toy": str(pairs)}, "analogy": str(questions), "plot_words": 5}
    config = build(EmbeddingEvalConfig, params)
    io = StageIO(inputs={"model": tmp_path / "model"}, outputs={"report": tmp_path / "report"})

    result = STAGE.run(config, io)
    assert result.metrics == pytest.approx(
        {
            "toy_spearman": 0.5,
            "toy_oov_rate": 0.25,
            "analogy_accuracy": 1.0,
            "analogy_oov_rate": 0.5,
            "analogy_total": 1.0,
        }
    )
    report = tmp_path / "report"
    assert result.artifacts == [report / "projection.png", report / "neighbours.md"]
    assert (report / "projection.png").read_bytes()[:8] == PNG_MAGIC
    assert "| error | *not in the model* |" in (report / "neighbours.md").read_text()
    assert STAGE.key_metrics[-1] == "analogy_accuracy"
