import json
import platform
import textwrap
from pathlib import Path

import pytest

from components.config import ConfigError, build
from components.stage import StageIO
from components.text import stdlib_text
from components.text.stdlib_text import STAGE, StdlibTextConfig, iter_stdlib_documents

MODULE = '''\
#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""A module docstring that is long enough to be kept as a document."""

# A comment block explaining why this module exists,
# in two lines.

# ----------------------------------------------


class Widget:
    """A widget class docstring, also long enough to be kept."""

    def spin(self):
        """Short."""

    if True:
        def turn(self):  # type: ignore
            """A method defined inside an if block is still Widget.turn."""


def helper():
    """A helper function docstring that is long enough to be kept."""
    def inner():
        """An inner function docstring that is long enough to be kept."""
'''


@pytest.fixture
def fake_stdlib(tmp_path: Path) -> Path:
    """A tiny stdlib tree: one real module, and files that must be skipped."""
    root = tmp_path / "lib"
    for rel, source in {
        "pkg/mod.py": MODULE,
        "broken.py": '"""A docstring in a file that does not parse at all."""\ndef (:\n',
        "site-packages/third.py": '"""Third-party code that is not part of the stdlib."""\n',
        "test/test_mod.py": '"""Tests are skipped: they are mostly code, not prose."""\n',
        "pkg/tests/test_x.py": '"""Nested test directories are skipped as well, always."""\n',
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(source))
    return root


def test_docstrings_of_fake_stdlib(fake_stdlib: Path):
    docs = dict(iter_stdlib_documents(["docstrings"], stdlib_root=fake_stdlib))
    assert list(docs) == [
        "docstrings/pkg/mod.py",
        "docstrings/pkg/mod.py::Widget",
        "docstrings/pkg/mod.py::Widget.turn",
        "docstrings/pkg/mod.py::helper",
        "docstrings/pkg/mod.py::helper.inner",
    ]
    assert docs["docstrings/pkg/mod.py"] == (
        "A module docstring that is long enough to be kept as a document."
    )


def test_comments_of_fake_stdlib(fake_stdlib: Path):
    docs = list(iter_stdlib_documents(["comments"], stdlib_root=fake_stdlib))
    # shebang, coding line, ruler and `type:` directive dropped; blocks split by a blank line
    assert docs == [
        (
            "comments/pkg/mod.py",
            "A comment block explaining why this module exists,\nin two lines.",
        )
    ]


def test_topics_come_from_pydoc_data():
    from pydoc_data.topics import topics

    docs = dict(iter_stdlib_documents(["topics"]))
    assert "topics/assert" in docs
    assert docs["topics/assert"] == topics["assert"].strip()
    assert list(docs) == sorted(docs)


@pytest.mark.parametrize("kinds", [["topics"], ["docstrings"], ["comments", "topics"]])
def test_real_stdlib_is_deterministic(kinds):
    first = list(iter_stdlib_documents(kinds, max_docs=40))
    assert first == list(iter_stdlib_documents(kinds, max_docs=40))
    assert len(first) == 40
    assert all(doc_id.startswith(f"{kinds[0]}/") for doc_id, _ in first)
    assert all(len(text) >= stdlib_text.MIN_CHARS for _, text in first)
    assert not any("site-packages" in doc_id or "/test/" in doc_id for doc_id, _ in first)


@pytest.mark.parametrize("max_docs", [1, 3, 7])
def test_max_docs_caps_all_kinds_together(fake_stdlib: Path, max_docs: int):
    docs = list(iter_stdlib_documents(["docstrings", "comments"], max_docs, fake_stdlib))
    everything = list(iter_stdlib_documents(["docstrings", "comments"], None, fake_stdlib))
    assert len(everything) == 6
    assert docs == everything[:max_docs]


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="poems"):
        iter_stdlib_documents(["poems"])


def test_stage_writes_one_jsonl_per_kind(fake_stdlib: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(stdlib_text.sysconfig, "get_paths", lambda: {"stdlib": str(fake_stdlib)})
    config = build(StdlibTextConfig, {"kinds": ["docstrings", "comments"]}, "stdlib_text")
    out = tmp_path / "raw"
    result = STAGE.run(config, StageIO(inputs={}, outputs={"raw": out}))

    assert sorted(p.name for p in out.iterdir()) == [
        "comments.jsonl",
        "docstrings.jsonl",
        "source.json",
    ]
    rows = {kind: _read_jsonl(out / f"{kind}.jsonl") for kind in ("docstrings", "comments")}
    assert [row["id"] for row in rows["comments"]] == ["comments/pkg/mod.py"]
    assert len(rows["docstrings"]) == 5
    assert result.metrics["documents"] == 6
    assert result.metrics["docstrings_documents"] == 5
    texts = [row["text"] for kind_rows in rows.values() for row in kind_rows]
    assert result.metrics["bytes"] == sum(len(text.encode()) for text in texts)
    source = json.loads((out / "source.json").read_text())
    assert source["python"] == platform.python_version()
    assert source["kinds"] == ["docstrings", "comments"]


def test_stage_with_real_stdlib_and_max_docs(tmp_path: Path):
    out = tmp_path / "raw"
    result = STAGE.run(StdlibTextConfig(max_docs=90), StageIO(inputs={}, outputs={"raw": out}))
    topics, docstrings = _read_jsonl(out / "topics.jsonl"), _read_jsonl(out / "docstrings.jsonl")
    assert len(topics) + len(docstrings) == 90
    assert result.metrics["topics_documents"] == len(topics) > 0
    assert result.metrics["docstrings_documents"] == len(docstrings) > 0


@pytest.mark.parametrize(
    "params, key",
    [
        ({"kinds": ["poems"]}, "stdlib_text.kinds[0]"),
        ({"kinds": []}, "stdlib_text.kinds"),
        ({"kinds": ["topics", "topics"]}, "stdlib_text.kinds"),
        ({"max_docs": 0}, "stdlib_text.max_docs"),
        ({"max_docs": "all"}, "stdlib_text.max_docs"),
    ],
)
def test_config_errors_name_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        build(StdlibTextConfig, params, "stdlib_text")
    assert err.value.key == key


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:  # not splitlines(): text may hold U+2028
        return [json.loads(line) for line in lines]
