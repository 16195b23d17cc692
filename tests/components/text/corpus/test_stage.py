import pytest

from components.config import build
from components.stage import StageInputError, StageIO
from components.text.corpus.config import CorpusConfig
from components.text.corpus.stage import STAGE
from tests.components.text.corpus.test_build import all_rows, rows, write, write_jsonl


def test_stage_on_a_directory(tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", "a text file")
    write_jsonl(src / "sub" / "b.jsonl", [{"id": i, "text": f"line {i}"} for i in range(50)])
    write(src / "notes.md", "not included")
    config = build(CorpusConfig, {"val_fraction": 0.2}, "corpus")
    out = tmp_path / "corpus"
    io = StageIO(inputs={"sources": src}, outputs={"corpus": out})
    result = STAGE.run(config, io)

    assert result.metrics["files"] == 2
    assert result.metrics["kept"] == 51
    assert [io.path(a) for a in result.artifacts] == [out / "report.json"]
    assert [(d.name, io.path(d.path), d.context) for d in result.datasets] == [
        ("corpus-train", out / "train.parquet", "train"),
        ("corpus-val", out / "val.parquet", "val"),
    ]
    assert [d.num_rows for d in result.datasets] == [
        len(rows(out, "train")),
        len(rows(out, "val")),
    ]
    assert "sub/b.jsonl:7" in all_rows(out)


def test_stage_on_a_single_file(tmp_path):
    path = write(
        tmp_path / "one.txt",
        "just\n\nthis",
    )
    out = tmp_path / "corpus"
    STAGE.run(
        CorpusConfig(val_fraction=0.0, txt_split="paragraph"),
        StageIO({"sources": path}, {"corpus": out}),
    )
    assert all_rows(out) == {"one.txt:0": "just", "one.txt:1": "this"}


def test_stage_on_missing_sources(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(StageInputError, match="nope"):
        STAGE.run(CorpusConfig(), StageIO({"sources": missing}, {"corpus": tmp_path / "out"}))
