import textwrap
from pathlib import Path

import pytest

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
