"""Word2VecConfig: which step `compile` picks, and out-of-range values named by key."""

from __future__ import annotations

import pytest

from components.config import ConfigError
from components.text.word2vec.config import Word2VecConfig


@pytest.mark.parametrize(
    ("mode", "compile", "hogwild", "compiles"),
    [("cbow", "auto", False, True), ("skipgram", "auto", False, False),
     ("skipgram", "auto", True, True), ("skipgram", "always", False, True),
     ("cbow", "never", True, False)],
)  # fmt: skip
def test_compile_auto_means_cbow_or_hogwild(mode, compile, hogwild, compiles):
    config = Word2VecConfig(mode=mode, compile=compile, hogwild=hogwild)
    assert config.compiles() is compiles


@pytest.mark.parametrize(
    "key, value",
    [("window", 0), ("dim", 0), ("negative", 0), ("min_count", 0), ("epochs", 0),
     ("alpha", 0.0), ("sample", -1e-3), ("batch_size", 0), ("workers", -1)],
)  # fmt: skip
def test_config_out_of_range_names_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        Word2VecConfig(**{key: value})
    assert err.value.key == key
    assert str(err.value).startswith(f"{key} = {value!r}: expected")
