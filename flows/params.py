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


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, through libyaml's C parser where PyYAML has it: ~10x faster, and
    every stage process reads params.yaml and dvc.lock (~180 KB for the default pipeline).
    Malformed text is parsed again by the Python parser, whose error says what it expected
    and what it found ("expected ',' or ']', but got ':'"; libyaml: "did not find expected
    ',' or ']'")."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            return yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text)


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
        data = parse_yaml(text)
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
    """`"bpe.small.vocab_size=500"` -> ("bpe.small.vocab_size", 500); values parse as YAML.

    Errors are one line (they end up on a terminal as `loom run: error: ...`): a YAML
    problem is named with its column in the value, not with PyYAML's multi-line snippet.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r}: expected KEY=VALUE, e.g. bpe.small.vocab_size=500")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        where = f" at column {mark.column + 1} of the value" if mark else ""
        raise ParamsError(
            f"override {text!r}: value is not valid YAML ({problem}{where}); quote it for a "
            "string, e.g. key='[1'"
        ) from None
    return key.strip(), value


def _brief(value: Any) -> str:
    """`value` as it reads in an error message: short, one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_key(current: dict[str, Any], key: str, value: Any) -> None:
    """Raise ParamsError unless setting dotted `key` to `value` in `current` (params.yaml as
    loaded) is an edit of what is there: the key exists, and a section (a mapping, e.g.
    `word2vec`) is replaced only by a mapping or null, never by a scalar or a list.

    Adding keys is refused because no stage would read a misspelt one: the run would quietly
    use the old value. A section replaced by a scalar is refused because every stage reading
    it expects a mapping of fields; the message names the fields to set instead.
    """
    parent, _, leaf = key.rpartition(".")
    try:
        node = section(current, parent) if parent else current
    except ParamsError as err:
        raise ParamsError(f"override {key!r}: {err}") from None
    if not isinstance(node, dict):
        raise ParamsError(
            f"override {key!r}: no such key in {PARAMS_FILE} ({parent} is {_brief(node)}, "
            "not a section of keys)"
        )
    if leaf not in node:
        where = parent or "the top level"
        raise ParamsError(
            f"override {key!r}: no such key in {PARAMS_FILE} ({where} has {sorted(node)})"
        )
    old = node[leaf]
    if isinstance(old, dict) and old and value is not None and not isinstance(value, dict):
        first = sorted(old)[0]
        raise ParamsError(
            f"override {key}={_brief(value)}: {key} is a section of {PARAMS_FILE} with keys "
            f"{sorted(old)}; set one of them instead, e.g. -S {key}.{first}=..."
        )


def check_overrides(root: Path, overrides: list[str]) -> list[tuple[str, Any]]:
    """`KEY=VALUE` overrides parsed and checked against `root/params.yaml` as it is (syntax,
    keys, sections kept sections), without writing anything: what `loom run` can tell from
    params.yaml alone, before it waits on a lock or starts a server. Whether the values suit
    the stages (types, ranges) is the pipeline's check (`plan.check_params`)."""
    parsed = [parse_override(o) for o in overrides]
    if parsed:
        current = load(root)
        for key, value in parsed:
            check_key(current, key, value)
    return parsed


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
                found.append(f"{full}={json.dumps(value, default=str)}")  # dates: YAML text

    walk(data, current, "")
    for override in found:
        key, value = parse_override(override)
        try:
            check_key(current, key, value)
        except ParamsError as err:
            raise ParamsError(f"{overlay}: params overlay (-P): {err}") from None
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

    parsed = check_overrides(root, overrides)
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
