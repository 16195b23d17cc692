import pytest

from components.config import ConfigError, build
from components.text.stdlib_text.config import StdlibTextConfig


@pytest.mark.parametrize(
    "params, key",
    [
        ({"kinds": ["poems"]}, "stdlib_text.kinds[0]"),
        ({"kinds": []}, "stdlib_text.kinds"),
        ({"kinds": ["topics", "topics"]}, "stdlib_text.kinds"),
        ({"max_docs": 0}, "stdlib_text.max_docs"),
        ({"max_docs": "all"}, "stdlib_text.max_docs"),
    ],
)
def test_config_errors_name_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        build(StdlibTextConfig, params, "stdlib_text")
    assert err.value.key == key
