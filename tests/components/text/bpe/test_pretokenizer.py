"""Pre-tokenization: the block-wise ASCII fast path cuts text into the regex's own pieces."""

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

from components.text.bpe import pretokenizer
from components.text.bpe.pretokenizer import GPT2_PATTERN, PreTokenizer
from tests.components.text.bpe.test_tokenizer import SAMPLES


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.sampled_from(SAMPLES)), max_size=12).map("".join))
@example("00000000:\x1f\x80")  # \x1f is whitespace to `re`, not to `regex`
def test_blockwise_pretokenization_equals_plain_regex(text):
    # Blocks of 8 chars instead of 4096, so that cuts land everywhere.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretokenizer, "BLOCK_CHARS", 8)
        assert PreTokenizer(GPT2_PATTERN).findall(text) == regex.findall(GPT2_PATTERN, text)
