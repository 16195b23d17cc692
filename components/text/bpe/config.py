"""The bpe stage's config: how large a tokenizer to train, with which special tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import require
from components.text.bpe.tokenizer import ENDOFTEXT


@dataclass
class BpeStageConfig:
    """vocab_size: tokens in all: 256 bytes + merges + special tokens (fewer merges when no
        pair of the corpus occurs twice any more).
    special_tokens: strings never split or merged; "<|endoftext|>" separates documents.
    max_docs: read at most this many training documents (None: all); for quick runs."""

    vocab_size: int = 2000
    special_tokens: list[str] = field(default_factory=lambda: [ENDOFTEXT])
    max_docs: int | None = None

    def __post_init__(self) -> None:
        least = 256 + len(self.special_tokens)  # every byte and special token has an id
        require(self.vocab_size >= least, "vocab_size", self.vocab_size, f"an int >= {least}")
        require(
            len(set(self.special_tokens)) == len(self.special_tokens)
            and "" not in self.special_tokens,
            "special_tokens",
            self.special_tokens,
            "distinct non-empty strings",
        )
        if self.max_docs is not None:
            require(self.max_docs >= 1, "max_docs", self.max_docs, "an int >= 1 or null")
