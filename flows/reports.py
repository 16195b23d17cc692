"""The layout of a stage's DVC metrics file, written by `loom stage` and read back by summaries.

Metrics are nested under the stage's group name (the dvc.yaml name before any `@key`):
`metrics/bpe_small.json` is `{"bpe": {"vocab_size": 1024, ...}}`. `dvc metrics show` flattens
nesting into `bpe.vocab_size` columns and sorts them, so a pipeline's table reads component by
component, the `small` and `large` rows of one component sharing its columns, instead of one
flat run of unrelated names; `dvc exp show` groups its columns the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from flows import project


def nested(stage: str, metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """{"vocab_size": 1024.0} of stage "bpe@small" -> {"bpe": {"vocab_size": 1024}}; integral
    values are written as ints (DVC shows `1024`, not `1024.0`)."""
    return {project.stage_group(stage): {k: _plain(v) for k, v in sorted(metrics.items())}}


def flat(document: Any) -> dict[str, float]:
    """The numeric metrics of a metrics document, un-nested: {"bpe": {"vocab_size": 1024}} ->
    {"vocab_size": 1024.0}. A flat document (written before the nesting) reads as it is."""
    if not isinstance(document, dict):
        return {}
    inner = next(iter(document.values())) if len(document) == 1 else None
    values = inner if isinstance(inner, dict) else document
    return {
        str(k): float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def read(path: Path) -> dict[str, float]:
    """The metrics in a stage's JSON or YAML metrics file ({} when it is missing or unreadable:
    a summary of a stage that never wrote one)."""
    try:
        text = Path(path).read_text()
        if Path(path).suffix in (".yaml", ".yml"):
            return flat(yaml.safe_load(text))
        return flat(json.loads(text))
    except (OSError, ValueError, yaml.YAMLError):
        return {}


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)
