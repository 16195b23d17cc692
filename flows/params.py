"""params.yaml: load with clear errors, look up dotted sections, apply `-S key=value` overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
# Orchestration settings (retries, ...) live in this section; no stage declares it in its
# `params`, so changing them never invalidates a stage.
LOOM_SECTION = "loom"


class ParamsError(ValueError):
    """params.yaml is unreadable, malformed, or lacks a key."""


def load(root: Path) -> dict[str, Any]:
    """Parse `root/params.yaml`; YAML errors name the file, line and column."""
    return load_file(Path(root) / PARAMS_FILE)


def load_file(path: Path, role: str | None = None) -> dict[str, Any]:
    """Parse a YAML mapping of sections; `role` (e.g. "params overlay (-P)") is what a
    missing file is called in the error, which otherwise is about the project's params.yaml."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if role:
            raise ParamsError(f"{path}: {role} not found") from None
        raise ParamsError(
            f"{path}: file not found (every Loom project needs a params.yaml)"
        ) from None
    except OSError as err:  # a directory, no permission
        raise ParamsError(f"{path}: cannot read {role or 'file'}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ParamsError(f"{path}:{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}"
        )
    return data


def section(params: dict[str, Any], key: str) -> Any:
    """The value at dotted `key` (e.g. "bpe.small")."""
    node: Any = params
    walked: list[str] = []
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            have = sorted(node) if isinstance(node, dict) else []
            where = ".".join(walked) or "the top level"
            raise ParamsError(
                f"{PARAMS_FILE}: no key {key!r} (no {part!r} under {where}; have {have})"
            )
        node = node[part]
        walked.append(part)
    return node


def parse_override(text: str) -> tuple[str, Any]:
    """`"bpe.small.vocab_size=500"` -> ("bpe.small.vocab_size", 500); values parse as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r}: expected KEY=VALUE, e.g. bpe.small.vocab_size=500")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ParamsError(f"override {text!r}: value is not valid YAML: {err}") from None
    return key.strip(), value


def overlay_overrides(root: Path, overlay: Path) -> list[str]:
    """A params overlay file (e.g. params.gpu.yaml) as `KEY=VALUE` overrides.

    Mappings recurse where params.yaml has a mapping with all the same keys; anything else
    (including a mapping that adds keys, e.g. `stage_retries`) replaces the value whole.
    """
    import json

    data = load_file(Path(overlay), role="params overlay (-P)")
    current = load(root)
    found: list[str] = []

    def walk(node: Any, base: Any, prefix: str) -> None:
        for key, value in node.items():
            full = f"{prefix}.{key}" if prefix else str(key)
            sub = base.get(key) if isinstance(base, dict) else None
            if isinstance(value, dict) and isinstance(sub, dict) and set(value) <= set(sub):
                walk(value, sub, full)
            else:
                found.append(f"{full}={json.dumps(value)}")

    walk(data, current, "")
    return found


def _round_trip_yaml() -> Any:
    """ruamel.yaml as DVC uses it, but keeping what a person wrote: comments, quotes, `null`."""
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):
        """`null` for None; a subclass, since add_representer on ruamel's own class would
        change how DVC writes dvc.lock in this process too."""

    Representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    rt = YAML(typ="rt")
    rt.Representer = Representer
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a long line
    rt.indent(mapping=2, sequence=4, offset=2)
    return rt


def apply_overrides(
    root: Path, overrides: list[str], check: Callable[[str], None] | None = None
) -> list[tuple[str, Any]]:
    """Write `KEY=VALUE` overrides into params.yaml, as `dvc exp run -S` does.

    The file stays the single source of truth (so `dvc status`/`dvc repro` agree with what ran).
    Only existing keys may be set: a typo must not silently add a new key that no stage reads.
    The new text is made in memory (a round-trip YAML writer keeps comments, quoting, `null`
    and layout), then `check(new_text)` may reject it; only then is it written, atomically.
    On any failure the file is byte for byte what it was.
    """
    import io

    from flows import atomic

    parsed = [parse_override(o) for o in overrides]
    current = load(root)
    for key, _ in parsed:
        parent, _, leaf = key.rpartition(".")
        node = section(current, parent) if parent else current
        if not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"override {key!r}: no such key in {PARAMS_FILE}")
    if not parsed:
        return parsed
    path = Path(root) / PARAMS_FILE
    rt = _round_trip_yaml()
    data = rt.load(path.read_text(encoding="utf-8"))
    for key, value in parsed:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    out = io.StringIO()
    rt.dump(data, out)
    text = out.getvalue()
    if check is not None:
        check(text)
    atomic.write_text(path, text)
    return parsed
