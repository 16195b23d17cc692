"""Pre-tokenization: text cut into the pieces BPE merges within (GPT-2's regex), and the
splitter that cuts special tokens out first. Both the tokenizer and the trainer use it.

    PreTokenizer(GPT2_PATTERN).findall("Hello world!")  # ['Hello', ' world', '!']

Speed: ASCII text is matched with `re`, about twice as fast as `regex` and giving equal
pieces; long, mostly-ASCII text block by block at cuts that change no piece.
"""

from __future__ import annotations

import re
from functools import cache

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Faster spellings of GPT-2's pattern, both matching exactly the same pieces. For `regex`:
# tiktoken's factored contractions (~13% faster; no contraction is a prefix of another).
# For ASCII text: `re` with ASCII classes, where \p{L} = [A-Za-z], \p{N} = [0-9] and \s
# agree with `regex`'s Unicode classes; `re` runs it about twice as fast.
_FASTER_SPELLING = {
    GPT2_PATTERN: r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
}
_ASCII_SPELLING = {
    GPT2_PATTERN: r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
}
# No piece holds non-whitespace followed by whitespace (a space only leads a piece; whitespace
# runs hold nothing else), and no alternative looks left: cutting text between the two leaves
# the pieces unchanged, so long text can be matched block by block.
_SAFE_CUT = regex.compile(r"\S(?=\s)")  # \s as `regex` has it: not \x1c-\x1f
BLOCK_CHARS = 1 << 12  # ASCII fast path granularity for long, mostly-ASCII texts


class PreTokenizer:
    """`findall(text)`: the pieces of `text` under `pattern`, ASCII blocks through `re`."""

    def __init__(self, pattern: str):
        self._full = regex.compile(_FASTER_SPELLING.get(pattern, pattern))
        ascii_pattern = _ASCII_SPELLING.get(pattern)
        self._ascii = re.compile(ascii_pattern, re.ASCII) if ascii_pattern else None

    def findall(self, text: str) -> list[str]:
        if self._ascii is None:
            return self._full.findall(text)
        if text.isascii():
            return self._ascii.findall(text)
        if len(text) <= BLOCK_CHARS:
            return self._full.findall(text)
        pieces: list[str] = []
        start = 0
        while start < len(text):
            cut = _SAFE_CUT.search(text, start + BLOCK_CHARS)
            end = cut.end() if cut else len(text)
            block = text[start:end]
            pieces += (self._ascii if block.isascii() else self._full).findall(block)
            start = end
        return pieces


@cache
def special_splitter(specials: tuple[str, ...]) -> re.Pattern:
    """A pattern whose `split` keeps each special token as an odd-indexed part; longest first,
    so a special token that contains another wins."""
    alternatives = sorted(specials, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
