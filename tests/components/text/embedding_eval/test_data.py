import re
from pathlib import Path

import gensim
import pytest

from components.stage import StageInputError
from components.text.embedding_eval.data import (
    Analogy,
    read_analogies,
    read_word_pairs,
    resolve_path,
)

GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_real_similarity_files():
    wordsim = read_word_pairs(GENSIM_DATA / "wordsim353.tsv")
    simlex = read_word_pairs(GENSIM_DATA / "simlex999.txt")
    assert (len(wordsim), len(simlex)) == (353, 999)  # the two "#" header lines are comments
    assert (wordsim[0].word1, wordsim[0].word2, wordsim[0].score) == ("love", "sex", 6.77)
    assert (simlex[1].word1, simlex[1].word2, simlex[1].score) == ("smart", "intelligent", 9.2)


def test_real_analogy_file():
    questions = read_analogies(GENSIM_DATA / "questions-words.txt")
    assert len(questions) == 19544
    assert questions[0] == Analogy(
        "capital-common-countries", "Athens", "Greece", "Baghdad", "Iraq"
    )
    assert len({q.section for q in questions}) == 14
    assert questions[-1].section == "gram9-plural-verbs"


def test_blank_lines_crlf_and_original_simlex_header(tmp_path):
    path = write(tmp_path, "pairs.tsv", "# comment\r\n\r\nold\tnew\t1.58\r\n\n")
    assert [(p.word1, p.word2, p.score) for p in read_word_pairs(path)] == [("old", "new", 1.58)]
    original = write(
        tmp_path,
        "SimLex-999.txt",
        "word1\tword2\tPOS\tSimLex999\tconc(w1)\n"
        "old\tnew\tA\t1.58\t2.72\nsmart\tintelligent\tA\t9.2\t1.75\n",
    )
    assert [p.score for p in read_word_pairs(original)] == [1.58, 9.2]


@pytest.mark.parametrize(
    "text, line, expected",
    [
        ("# header\nlove\tsex\t6.77\ntiger\tcat\n", 3, "3 tab-separated columns"),
        ("love\tsex\t6.77\ntiger cat 7.35\n", 2, "3 tab-separated columns"),
        ("love\tsex\t6.77\n\ntiger\tcat\tmany\n", 3, "a numeric score"),
        ("love\tsex\t6.77\textra\n", 1, "3 tab-separated columns"),
    ],
)
def test_malformed_similarity_lines(tmp_path, text, line, expected):
    path = write(tmp_path, "pairs.tsv", text)
    with pytest.raises(StageInputError) as err:
        read_word_pairs(path)
    bad = text.split("\n")[line - 1]
    assert str(err.value).startswith(f"{path}:{line}: {bad!r}: expected {expected}")


@pytest.mark.parametrize(
    "text, line, expected",
    [
        ("Athens Greece Baghdad Iraq\n", 1, "a ': section' header"),
        (": capitals\nAthens Greece Baghdad\n", 2, "4 space-separated words"),
        (": capitals\nAthens Greece Baghdad Iraq\nA B C D E\n", 3, "4 space-separated words"),
        (": capitals\nAthens Greece Baghdad Iraq\n:  \n", 3, "a section name"),
    ],
)
def test_malformed_analogy_lines(tmp_path, text, line, expected):
    path = write(tmp_path, "questions.txt", text)
    with pytest.raises(StageInputError) as err:
        read_analogies(path)
    bad = text.split("\n")[line - 1]
    assert str(err.value).startswith(f"{path}:{line}: {bad!r}: expected {expected}")


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_empty_similarity_file(tmp_path, text):
    path = write(tmp_path, "pairs.tsv", text)
    with pytest.raises(StageInputError, match=re.escape(f"{path}: no word pairs found")):
        read_word_pairs(path)


def test_empty_and_missing_analogy_file(tmp_path):
    path = write(tmp_path, "questions.txt", ": capitals\n\n")
    with pytest.raises(StageInputError, match=re.escape(f"{path}: no analogy questions found")):
        read_analogies(path)
    with pytest.raises(StageInputError, match="nope.txt: file not found"):
        read_analogies(tmp_path / "nope.txt")
    with pytest.raises(StageInputError, match="nope.tsv: file not found"):
        read_word_pairs(tmp_path / "nope.tsv")


def test_resolve_pkg_and_plain_paths(tmp_path, monkeypatch):
    assert resolve_path("pkg:gensim/test/test_data/wordsim353.tsv") == (
        GENSIM_DATA / "wordsim353.tsv"
    )
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "mine.tsv", "a\tb\t1\n")
    assert resolve_path("mine.tsv").resolve() == tmp_path / "mine.tsv"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("pkg:no_such_package_xyz/data.txt", "no installed package named 'no_such_package_xyz'"),
        ("pkg:no_such_parent.child/data.txt", "no installed package named"),
        ("pkg:/data.txt", "no installed package named ''"),
        ("pkg:gensim/test/test_data/no_such_file.txt", "file not found"),
        ("no/such/file.txt", "file not found"),
    ],
)
def test_resolve_errors(spec, message):
    with pytest.raises(StageInputError, match=message) as err:
        resolve_path(spec)
    assert str(err.value).startswith(spec)
