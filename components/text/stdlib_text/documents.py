"""Real English text that ships with Python itself, so the default pipeline builds offline.

Three kinds of document, each yielded as `(doc_id, text)` in a fixed order:

    topics      pydoc's help topics (`pydoc_data.topics`), one per topic: "topics/assert"
    docstrings  module/class/function docstrings of the stdlib sources, read with `ast` (never
                imported), one per docstring: "docstrings/json/decoder.py::JSONDecoder.decode";
                a module docstring is "docstrings/json/decoder.py"
    comments    the `#` comments of one stdlib source file, blocks separated by a blank line:
                "comments/json/decoder.py"

On CPython 3.11.7 that is 0.47 MB of topics, 1.75 MB of docstrings and 1.89 MB of comments
(4.10 MB in all) of UTF-8 text; texts under 40 characters are skipped. Sources are scanned
from `sysconfig.get_paths()["stdlib"]` in sorted order, skipping site-packages, test
directories and files that do not parse.

`write_stdlib_text` (the stage's work) writes one `<kind>.jsonl` per kind (lines `{"id": ...,
"text": ...}`) plus `source.json` recording the Python version, since the text changes with it.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import platform
import re
import sys
import sysconfig
import tokenize
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path
from typing import TextIO

from components.text.stdlib_text.config import KINDS, Kind, StdlibTextConfig

FORMAT_VERSION = 1
MIN_CHARS = 40  # shorter texts are mostly "Return self." boilerplate, not prose
CODING_LINE = re.compile(r"#.*?coding[:=]")  # PEP 263
DIRECTIVE = re.compile(r"#\s*(type:|noqa|pragma:|fmt:|pylint:)")  # for tools, not prose
SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)


def iter_stdlib_documents(
    kinds: Sequence[Kind] = ("topics", "docstrings"),
    max_docs: int | None = None,
    stdlib_root: Path | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield `(doc_id, text)` for each kind in turn, at most `max_docs` in all, skipping texts
    shorter than MIN_CHARS.

    `stdlib_root` defaults to this interpreter's stdlib; topics always come from pydoc_data.
    """
    root = Path(stdlib_root or sysconfig.get_paths()["stdlib"])
    sources = {"topics": _topics, "docstrings": _docstrings, "comments": _comments}
    unknown = [k for k in kinds if k not in sources]
    if unknown:
        raise ValueError(f"unknown stdlib text kinds {unknown}: expected some of {list(KINDS)}")
    docs: Iterator[tuple[str, str]] = itertools.chain.from_iterable(sources[k](root) for k in kinds)
    docs = ((doc_id, text) for doc_id, text in docs if len(text) >= MIN_CHARS)
    return itertools.islice(docs, max_docs)


def _topics(_root: Path) -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"topics/{name}", topics[name].strip()


def _docstrings(root: Path) -> Iterator[tuple[str, str]]:
    for rel, source in _source_files(root):
        tree = _parse(source)
        if tree is None:
            continue
        seen: set[str] = set()
        for qualname, node in _documented_nodes(tree, ""):
            text = ast.get_docstring(node, clean=True)
            if not text or not _encodable(text):
                continue
            doc_id = f"docstrings/{rel}" + (f"::{qualname}" if qualname else "")
            # redefinitions (property setters, platform branches); the module comes first
            if doc_id in seen and not isinstance(node, ast.Module):
                doc_id += f"@{node.lineno}"
            seen.add(doc_id)
            yield doc_id, text.strip()


_Def = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def _documented_nodes(
    node: ast.Module | _Def, qualname: str
) -> Iterator[tuple[str, ast.Module | _Def]]:
    """Preorder: `(qualname, node)` for `node` and every class/function defined inside it."""
    yield qualname, node
    for child in _defs_in(node):
        yield from _documented_nodes(child, f"{qualname}.{child.name}" if qualname else child.name)


def _defs_in(node: ast.AST) -> Iterator[_Def]:
    """Defs directly in `node`'s scope, including those inside if/try/with/match blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child
        elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
            yield from _defs_in(child)


def _comments(root: Path) -> Iterator[tuple[str, str]]:
    for rel, source in _source_files(root):
        try:
            tokens = list(tokenize.tokenize(BytesIO(source).readline))
        except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
            continue
        blocks: list[list[str]] = []
        last_row = -1
        for tok in tokens:
            if tok.type != tokenize.COMMENT or _is_noise(tok.string, tok.start[0]):
                continue
            line = tok.string.lstrip("#").rstrip()
            line = line[1:] if line.startswith(" ") else line
            if tok.start[0] != last_row + 1:
                blocks.append([])
            blocks[-1].append(line)
            last_row = tok.start[0]
        text = "\n\n".join("\n".join(block) for block in blocks).strip()
        if _encodable(text):
            yield f"comments/{rel}", text


def _is_noise(comment: str, row: int) -> bool:
    """Shebang/coding lines, tool directives and rulers like `# -----` carry no prose."""
    if row <= 2 and (comment.startswith("#!") or CODING_LINE.match(comment)):
        return True
    return bool(DIRECTIVE.match(comment)) or not any(ch.isalnum() for ch in comment)


def _source_files(root: Path) -> Iterator[tuple[str, bytes]]:
    """(posix path relative to root, file bytes) of every stdlib .py file, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath, name)
                yield path.relative_to(root).as_posix(), path.read_bytes()


def _parse(source: bytes) -> ast.Module | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old sources
        try:
            return ast.parse(source)
        except (SyntaxError, ValueError):
            return None


def _encodable(text: str) -> bool:
    """False for text with lone surrogates (from escapes in a docstring), which UTF-8 refuses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def write_stdlib_text(config: StdlibTextConfig, out_dir: Path) -> dict[str, int]:
    """Write `<kind>.jsonl` per kind and `source.json` into `out_dir`; return counts
    `documents`, `bytes` (UTF-8 text) and `<kind>_documents`, `<kind>_bytes` per kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {f"{kind}_{unit}": 0 for kind in config.kinds for unit in ("documents", "bytes")}
    with ExitStack() as stack:
        files: dict[str, TextIO] = {
            kind: stack.enter_context(
                (out_dir / f"{kind}.jsonl").open("w", encoding="utf-8", newline="\n")
            )
            for kind in config.kinds
        }
        for doc_id, text in iter_stdlib_documents(config.kinds, config.max_docs):
            kind = doc_id.split("/", 1)[0]
            files[kind].write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            counts[f"{kind}_documents"] += 1
            counts[f"{kind}_bytes"] += len(text.encode("utf-8"))
    counts["documents"] = sum(counts[f"{kind}_documents"] for kind in config.kinds)
    counts["bytes"] = sum(counts[f"{kind}_bytes"] for kind in config.kinds)
    source = {
        "format_version": FORMAT_VERSION,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "kinds": list(config.kinds),
        "max_docs": config.max_docs,
        "counts": counts,
    }
    (out_dir / "source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return counts
