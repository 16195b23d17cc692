import pytest

from components.config import ConfigError, build
from components.text.corpus.config import CorpusConfig

# ---- config and stage


@pytest.mark.parametrize(
    "params, key",
    [
        ({"val_fraction": 1.5}, "corpus.val_fraction"),
        ({"val_fraction": 1.0}, "corpus.val_fraction"),
        ({"val_fraction": "half"}, "corpus.val_fraction"),
        ({"min_chars": -1}, "corpus.min_chars"),
        ({"normalisation": "NFC"}, "corpus.normalisation"),
        ({"normalization": "NFD"}, "corpus.normalization"),
        ({"txt_split": "line"}, "corpus.txt_split"),
        ({"on_invalid_utf8": "ignore"}, "corpus.on_invalid_utf8"),
        ({"include": []}, "corpus.include"),
        ({"include": ["/etc/*.txt"]}, "corpus.include[0]"),
        ({"include": ["../*.txt"]}, "corpus.include[0]"),
        ({"split_seed": -1}, "corpus.split_seed"),
        ({"text_field": ""}, "corpus.text_field"),
    ],
)
def test_config_errors_name_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        build(CorpusConfig, params, "corpus")
    assert err.value.key == key
    assert key in str(err.value)
