from pathlib import Path

import pytest

from components.text.stdlib_text import documents
from components.text.stdlib_text.documents import iter_stdlib_documents


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
    assert all(len(text) >= documents.MIN_CHARS for _, text in first)
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
