"""The stdlib_text stage's config: which kinds of documents, how many at most."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.config import require

Kind = Literal["topics", "docstrings", "comments"]
KINDS: tuple[str, ...] = ("topics", "docstrings", "comments")


@dataclass
class StdlibTextConfig:
    """kinds: which documents to extract, written in this order.
    max_docs: cap on documents over all kinds (None: everything); for quick runs."""

    kinds: list[Kind] = field(default_factory=lambda: ["topics", "docstrings"])
    max_docs: int | None = None

    def __post_init__(self) -> None:
        require(len(self.kinds) > 0, "kinds", self.kinds, f"a non-empty list of {list(KINDS)}")
        require(len(set(self.kinds)) == len(self.kinds), "kinds", self.kinds, "no repeated kind")
        if self.max_docs is not None:
            require(self.max_docs >= 1, "max_docs", self.max_docs, "an int >= 1 or null")
