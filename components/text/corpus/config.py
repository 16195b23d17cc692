"""The corpus stage's config: which source files, how texts are read, normalized and split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from components.config import require


@dataclass
class CorpusConfig:
    """include:         globs applied inside the sources directory (ignored for a single file)
    txt_split:       a .txt file is one document, or one per blank-line-separated paragraph
    text_field:      jsonl key / Parquet column holding the text
    id_field:        jsonl key / Parquet column holding a document id, if present (null: none)
    normalization:   Unicode normal form applied to every text
    min_chars:       drop documents shorter than this after normalization (empty ones always)
    val_fraction:    expected share of documents in val, in [0, 1)
    split_seed:      salt of the split hash; change it for a different split
    on_invalid_utf8: "error" stops at the first bad byte; "replace" substitutes U+FFFD
    """

    include: list[str] = field(default_factory=lambda: ["**/*.txt", "**/*.jsonl", "**/*.parquet"])
    txt_split: Literal["file", "paragraph"] = "file"
    text_field: str = "text"
    id_field: str | None = "id"
    normalization: Literal["NFC", "NFKC", "none"] = "NFC"
    min_chars: int = 1
    val_fraction: float = 0.05
    split_seed: int = 0
    on_invalid_utf8: Literal["error", "replace"] = "error"

    def __post_init__(self) -> None:
        require(len(self.include) > 0, "include", self.include, "a non-empty list of globs")
        for i, pattern in enumerate(self.include):
            inside = pattern and not Path(pattern).is_absolute() and ".." not in Path(pattern).parts
            require(bool(inside), f"include[{i}]", pattern, "a glob relative to the sources dir")
        require(self.text_field != "", "text_field", self.text_field, "a non-empty field name")
        require(self.id_field != "", "id_field", self.id_field, "a non-empty field name or null")
        require(self.min_chars >= 0, "min_chars", self.min_chars, "an int >= 0")
        require(0 <= self.val_fraction < 1, "val_fraction", self.val_fraction, "0 <= x < 1")
        require(0 <= self.split_seed < 2**128, "split_seed", self.split_seed, "0 <= x < 2**128")
