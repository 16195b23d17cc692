import sys
import types

import pytest

from components.config import build
from components.stage import StageIO
from components.text.embedding_eval.config import EmbeddingEvalConfig
from components.text.embedding_eval.stage import STAGE
from tests.components.text.embedding_eval.planted import PNG_MAGIC, planted


def test_stage_run_with_a_stand_in_model(tmp_path, monkeypatch):
    """_run's wiring, with a stand-in for components.text.word2vec.vectors (its loader)."""
    model = planted()
    stand_in = types.ModuleType("components.text.word2vec.vectors")
    stand_in.Word2Vec = types.SimpleNamespace(load=lambda path: model)
    monkeypatch.setitem(sys.modules, "components.text.word2vec.vectors", stand_in)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("king\tqueen\t9\nking\tprince\t8\napple\tman\t1\napple\tunicorn\t5\n")
    questions = tmp_path / "questions.txt"
    questions.write_text(": royalty\nman king woman queen\nman king woman empress\n")
    params = {"similarity": {"toy": str(pairs)}, "analogy": str(questions), "plot_words": 5}
    config = build(EmbeddingEvalConfig, params)
    io = StageIO(inputs={"model": tmp_path / "model"}, outputs={"report": tmp_path / "report"})

    result = STAGE.run(config, io)
    assert result.metrics == pytest.approx(
        {
            "toy_spearman": 0.5,
            "toy_oov_rate": 0.25,
            "analogy_accuracy": 1.0,
            "analogy_oov_rate": 0.5,
            "analogy_total": 1.0,
        }
    )
    report = tmp_path / "report"
    assert [io.path(a) for a in result.artifacts] == [
        report / "projection.png",
        report / "neighbours.md",
    ]
    assert (report / "projection.png").read_bytes()[:8] == PNG_MAGIC
    assert "| error | *not in the model* |" in (report / "neighbours.md").read_text()
    assert STAGE.key_metrics[-1] == "analogy_accuracy"
