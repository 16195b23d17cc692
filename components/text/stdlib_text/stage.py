"""Stage "text.stdlib_text": real English text that ships with Python (see `documents`).

Output "raw": a new directory with one `<kind>.jsonl` per kind (lines `{"id": ..., "text":
...}`) and `source.json` recording the Python version, since the text changes with it.
"""

from __future__ import annotations

from components.stage import Output, Stage, StageIO, StageResult
from components.text.stdlib_text.config import StdlibTextConfig
from components.text.stdlib_text.documents import write_stdlib_text


def _run(config: StdlibTextConfig, io: StageIO) -> StageResult:
    out_dir = io.outputs["raw"]
    counts = write_stdlib_text(config, out_dir)
    return StageResult(metrics=dict(counts), artifacts=[Output("raw", "source.json")])


STAGE = Stage(
    name="text.stdlib_text",
    version="1",
    config=StdlibTextConfig,
    inputs=(),
    outputs=("raw",),
    run=_run,
    key_metrics=("documents", "bytes"),
)
