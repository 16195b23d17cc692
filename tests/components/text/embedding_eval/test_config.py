import pytest

from components.config import ConfigError, build
from components.text.embedding_eval.config import EmbeddingEvalConfig


def test_config_defaults_and_validation():
    config = build(EmbeddingEvalConfig, {})
    assert set(config.similarity) == {"wordsim353", "simlex999"}
    assert config.analogy == "pkg:gensim/test/test_data/questions-words.txt"
    assert (config.restrict_vocab, config.plot_words, config.neighbours) == (30000, 200, 8)
    assert build(EmbeddingEvalConfig, {"analogy": None, "similarity": {}}).analogy is None
    with pytest.raises(ConfigError, match="similarity = 'word sim': expected names"):
        build(EmbeddingEvalConfig, {"similarity": {"word sim": "x.tsv"}})
    with pytest.raises(ConfigError, match="restrict_vocab = 0"):
        build(EmbeddingEvalConfig, {"restrict_vocab": 0})
