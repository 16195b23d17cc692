from dataclasses import dataclass, field
from typing import Literal

import pytest

from components.config import ConfigError, build, require, to_dict


@dataclass
class Inner:
    rate: float = 0.1


@dataclass
class Cfg:
    vocab_size: int = 1000
    mode: Literal["fast", "exact"] = "fast"
    names: list[str] = field(default_factory=list)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        require(self.vocab_size >= 257, "vocab_size", self.vocab_size, "an int >= 257")


def test_defaults_and_values():
    cfg = build(Cfg, {"vocab_size": 500, "names": ["a"], "inner": {"rate": 1}}, "bpe")
    assert cfg == Cfg(vocab_size=500, names=["a"], inner=Inner(rate=1.0))
    assert isinstance(cfg.inner.rate, float)
    assert to_dict(cfg)["inner"] == {"rate": 1.0}
    assert build(Cfg, None) == Cfg()


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"vocab": 5}, "bpe.vocab", "one of the keys"),
        ({"vocab_size": "big"}, "bpe.vocab_size", "expected int"),
        ({"vocab_size": True}, "bpe.vocab_size", "expected int"),
        ({"vocab_size": 3}, "bpe.vocab_size", ">= 257"),
        ({"mode": "slow"}, "bpe.mode", "one of ['fast', 'exact']"),
        ({"names": "a"}, "bpe.names", "a list"),
        ({"names": ["a", 2]}, "bpe.names[1]", "expected str"),
        ({"limit": 1.5}, "bpe.limit", "int"),
        ({"inner": {"rate": "x"}}, "bpe.inner.rate", "float"),
        ({"inner": {"nope": 1}}, "bpe.inner.nope", "one of the keys ['rate']"),
    ],
)
def test_errors_name_key_value_and_expectation(data, key, expected):
    with pytest.raises(ConfigError) as info:
        build(Cfg, data, "bpe")
    assert info.value.key == key
    assert expected in str(info.value)
    assert repr(list(data.values())[0]) in str(info.value) or key.endswith("]") or "inner" in key


def test_non_mapping_section():
    with pytest.raises(ConfigError, match="bpe = 5: expected a mapping"):
        build(Cfg, 5, "bpe")
