import json
import platform
from pathlib import Path

from components.config import build
from components.stage import StageIO
from components.text.stdlib_text import documents
from components.text.stdlib_text.config import StdlibTextConfig
from components.text.stdlib_text.stage import STAGE


def test_stage_writes_one_jsonl_per_kind(fake_stdlib: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(documents.sysconfig, "get_paths", lambda: {"stdlib": str(fake_stdlib)})
    config = build(StdlibTextConfig, {"kinds": ["docstrings", "comments"]}, "stdlib_text")
    out = tmp_path / "raw"
    result = STAGE.run(config, StageIO(inputs={}, outputs={"raw": out}))

    assert sorted(p.name for p in out.iterdir()) == [
        "comments.jsonl",
        "docstrings.jsonl",
        "source.json",
    ]
    rows = {kind: _read_jsonl(out / f"{kind}.jsonl") for kind in ("docstrings", "comments")}
    assert [row["id"] for row in rows["comments"]] == ["comments/pkg/mod.py"]
    assert len(rows["docstrings"]) == 5
    assert result.metrics["documents"] == 6
    assert result.metrics["docstrings_documents"] == 5
    texts = [row["text"] for kind_rows in rows.values() for row in kind_rows]
    assert result.metrics["bytes"] == sum(len(text.encode()) for text in texts)
    source = json.loads((out / "source.json").read_text())
    assert source["python"] == platform.python_version()
    assert source["kinds"] == ["docstrings", "comments"]


def test_stage_with_real_stdlib_and_max_docs(tmp_path: Path):
    out = tmp_path / "raw"
    result = STAGE.run(StdlibTextConfig(max_docs=90), StageIO(inputs={}, outputs={"raw": out}))
    topics, docstrings = _read_jsonl(out / "topics.jsonl"), _read_jsonl(out / "docstrings.jsonl")
    assert len(topics) + len(docstrings) == 90
    assert result.metrics["topics_documents"] == len(topics) > 0
    assert result.metrics["docstrings_documents"] == len(docstrings) > 0


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:  # not splitlines(): text may hold U+2028
        return [json.loads(line) for line in lines]
