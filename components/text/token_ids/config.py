"""The tokenize stage's config: whether documents end in "<|endoftext|>", and the batch size."""

from __future__ import annotations

from dataclasses import dataclass

from components.config import require


@dataclass
class TokenizeConfig:
    """append_eot: end every document with the "<|endoftext|>" id (if the tokenizer has it).
    batch_size: documents per read/encode/write batch (and per parquet row group)."""

    append_eot: bool = True
    batch_size: int = 1024

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
