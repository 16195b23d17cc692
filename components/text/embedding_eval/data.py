"""Word-embedding test sets: word-similarity pairs and analogy questions, read strictly.

Similarity files (WordSim353 `.tsv`, SimLex-999) are tab-separated `word1 word2 score` lines;
lines starting with "#" are comments, as in gensim's `KeyedVectors.evaluate_word_pairs`:

    # Word 1	Word 2	Human (mean)
    tiger	cat	7.35

The original SimLex-999 release (a `word1 word2 POS SimLex999 ...` header row, 10 columns) is
read too: the header fixes the column count and the score comes from its "SimLex999" column.

Analogy files follow Google's `questions-words.txt`: ": section" headers, then "a b c d"
lines meaning a : b :: c : d.

Where gensim logs and skips a malformed line, these readers raise `StageInputError` naming the
file, line number and line: a silently shrunken test set makes scores incomparable. Blank lines
are skipped. Test-set paths in configs may be `pkg:<package>/<file inside it>` (see
`resolve_path`), so the sets shipped with gensim need no download.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from components.stage import StageInputError

PKG_PREFIX = "pkg:"


@dataclass(frozen=True)
class WordPair:
    word1: str
    word2: str
    score: float  # human similarity judgement


@dataclass(frozen=True)
class Analogy:
    """a : b :: c : expected, from section `section` (e.g. "capital-common-countries")."""

    section: str
    a: str
    b: str
    c: str
    expected: str

    @property
    def words(self) -> tuple[str, str, str, str]:
        return self.a, self.b, self.c, self.expected


def resolve_path(spec: str) -> Path:
    """`pkg:gensim/test/test_data/x.txt` -> <installed gensim dir>/test/test_data/x.txt (found
    without importing the package); any other spec is a path relative to the current directory.
    Raises StageInputError when the package or the file does not exist."""
    if not spec.startswith(PKG_PREFIX):
        path = Path(spec)
    else:
        package, _, inner = spec.removeprefix(PKG_PREFIX).partition("/")
        try:
            found = importlib.util.find_spec(package) if package else None
        except (ImportError, ValueError):  # e.g. a dotted name whose parent is missing
            found = None
        if found is None or not found.submodule_search_locations:
            raise StageInputError(f"{spec}: no installed package named {package!r}")
        path = Path(next(iter(found.submodule_search_locations))) / inner
    if not path.is_file():
        raise StageInputError(f"{spec}: file not found ({path.resolve()})")
    return path


def read_word_pairs(path: Path) -> list[WordPair]:
    """Pairs of a WordSim353/SimLex-999 file, in file order."""
    pairs: list[WordPair] = []
    columns, score_col = 3, 2
    for number, line in _lines(path):
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if not pairs and [f.strip().lower() for f in fields[:2]] == ["word1", "word2"]:
            # Original SimLex-999 header row.
            names = [f.strip() for f in fields]
            columns = len(names)
            score_col = names.index("SimLex999") if "SimLex999" in names else 2
            continue
        if len(fields) != columns:
            _bad(path, number, line, f"{columns} tab-separated columns (word1, word2, score)")
        try:
            score = float(fields[score_col])
        except ValueError:
            _bad(path, number, line, f"a numeric score in column {score_col + 1}")
        pairs.append(WordPair(fields[0].strip(), fields[1].strip(), score))
    if not pairs:
        raise StageInputError(f"{path}: no word pairs found (expected 'word1<TAB>word2<TAB>score')")
    return pairs


def read_analogies(path: Path) -> list[Analogy]:
    """Questions of a `questions-words.txt` file, in file order."""
    questions: list[Analogy] = []
    section: str | None = None
    for number, line in _lines(path):
        if line.startswith(":"):
            section = line[1:].strip()
            if not section:
                _bad(path, number, line, "a section name after ':'")
            continue
        if section is None:
            _bad(path, number, line, "a ': section' header before the first question")
        words = line.split()
        if len(words) != 4:
            _bad(path, number, line, "4 space-separated words 'a b c d' (a : b :: c : d)")
        questions.append(Analogy(section, *words))
    if not questions:
        raise StageInputError(
            f"{path}: no analogy questions found (expected ': section' + 'a b c d')"
        )
    return questions


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end of line) for each non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageInputError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise StageInputError(f"{path}: not UTF-8 text ({err})") from None
    # split("\n"), not splitlines(): numbers must match an editor's (no \x0c or \x1e breaks).
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def _bad(path: Path, number: int, line: str, expected: str) -> NoReturn:
    raise StageInputError(f"{path}:{number}: {line!r}: expected {expected}")
