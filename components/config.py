"""Typed config dataclasses built from plain dicts (a `params.yaml` section).

Stdlib only, so components stay importable on a bare torch box. `build(Cls, data, where)`
rejects unknown keys, wrong types and (through `__post_init__` checks that call `require`)
out-of-range values, each with an error naming where, key, value and what was expected.

    >>> @dataclass
    ... class Cfg:
    ...     vocab_size: int = 1000
    >>> build(Cfg, {"vocab_size": "big"}, where="bpe")
    Traceback (most recent call last):
    ConfigError: bpe.vocab_size = 'big': expected int

Runtime knobs (`runtime_field`: device, worker threads, compile, progress bars) say how a run
goes, not what it makes. They are part of the dataclass, so the component reads them like any
other field, but not of the stage's identity (`identity`): params.yaml holds them in the
`runtime:` section, which no stage lists under `params`, so changing one never re-runs a stage
under `dvc repro` / `loom run`, and the stage runner keys work dirs by `identity` only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A config value that does not fit its dataclass: names the key, value and expectation."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key} = {value!r}: expected {expected}")


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Range check for `__post_init__`; `key` is relative to the section."""
    if not ok:
        raise ConfigError(key, value, expected)


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Instantiate dataclass `cls` from `data`, validating every key recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where or "<root>", data, f"a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(where, str(unknown[0]))
        raise ConfigError(key, data[unknown[0]], f"one of the keys {sorted(fields)}")
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(_join(where, err.key), err.value, err.expected) from None
    except TypeError as err:  # a required field is missing
        raise ConfigError(
            where or "<root>", data, f"all required fields of {cls.__name__}: {err}"
        ) from None


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data (what MLflow logs)."""
    return dataclasses.asdict(config)


RUNTIME = "loom.runtime"  # dataclass field metadata key of a runtime knob


def runtime_field(default: Any) -> Any:
    """A field that says how the work runs, never what it produces (see the module doc)."""
    return dataclasses.field(default=default, metadata={RUNTIME: True})


def runtime_keys(cls: type) -> list[str]:
    """Dotted names of `cls`'s runtime knobs, nested config sections included
    ("device", "train.compile")."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.metadata.get(RUNTIME):
            keys.append(f.name)
        elif dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{k}" for k in runtime_keys(hints[f.name])]
    return keys


def identity(config: Any) -> dict[str, Any]:
    """`to_dict(config)` without its runtime knobs: what the outputs depend on."""
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get(RUNTIME):
            continue
        value = getattr(config, f.name)
        is_section = dataclasses.is_dataclass(value) and not isinstance(value, type)
        out[f.name] = identity(value) if is_section else value
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, value, f"one of {list(args)}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(err.expected)
        raise ConfigError(key, value, " or ".join(errors))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, f"a list ({_name(tp)})")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"a mapping ({_name(tp)})")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a type hint: never an instance
        return build(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "float")
        return float(value)
    if tp is int or tp is bool or tp is str:
        # bool is an int subclass in Python: refuse `vocab_size: true`.
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(key, value, tp.__name__)
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
