"""One save format for every model artifact: a directory with `config.json` and, for a model
with weights, `model.safetensors`.

    config.json        {"format": "loom-<kind>", "version": N, ...the model's own fields}
    model.safetensors  named tensors; metadata {"format": "loom-<kind>/N"} (one entry: with
                       several, safetensors writes them in a per-process random order, and
                       artifacts are versioned outputs whose bytes must not vary between runs)

`config.json` is the manifest a loader checks: `read_config` refuses another format or version
with a `StageInputError` naming the file, what it found and what it expected, so an artifact
written by another version of Loom fails at once instead of loading wrongly.

    save(out, "word2vec", 2, {"config": {...}}, {"input": w_in, "output": w_out})
    fields = read_config(out, "word2vec", 2)           # {"config": {...}}: the header checked
    tensors = read_tensors(out, ("input", "output"))   # {"input": Tensor, "output": Tensor}

A model without weights (the BPE tokenizer: a merge table) writes `config.json` alone. torch is
imported only to write or read tensors, so such artifacts load without it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.inputs import json_type, read_json
from components.stage import StageInputError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "config.json"
TENSORS_FILE = "model.safetensors"
HEADER = ("format", "version")


def format_name(kind: str) -> str:
    """The `format` field of an artifact of `kind`: "word2vec" -> "loom-word2vec"."""
    return f"loom-{kind}"


def save(
    directory: str | Path,
    kind: str,
    version: int,
    fields: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor] | None = None,
    indent: int | None = 2,
) -> Path:
    """Write `config.json` = {"format": "loom-<kind>", "version": version, **fields} (UTF-8,
    keys in the order given, `indent` as `json.dumps`'s) and, given `tensors`, contiguous CPU
    tensors to `model.safetensors`. Returns `directory`, created if need be."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(directory / CONFIG_FILE, format_name(kind), version, fields, indent)
    if tensors is not None:
        from safetensors.torch import save_file

        metadata = {"format": f"{format_name(kind)}/{version}"}
        save_file(dict(tensors), directory / TENSORS_FILE, metadata=metadata)
    return directory


def read_config(directory: str | Path, kind: str, version: int) -> dict[str, Any]:
    """The fields of `directory/config.json` other than the header, once the file is known to
    be a JSON object of format "loom-<kind>", version `version`. Raises `StageInputError`
    naming the file: missing, unreadable, not an object, or another format or version."""
    return read_manifest(Path(directory) / CONFIG_FILE, format_name(kind), version)


def write_manifest(
    path: Path, format: str, version: int, fields: Mapping[str, Any], indent: int | None = 2
) -> None:
    """A JSON manifest: {"format": format, "version": version, **fields}, UTF-8, keys in the
    order given. Artifacts' config.json and the data stores' meta.json are written so."""
    clash = [key for key in HEADER if key in fields]
    if clash:
        raise ValueError(f"fields {clash} are the manifest header's own")
    document = {"format": format, "version": version, **fields}
    text = json.dumps(document, ensure_ascii=False, indent=indent) + "\n"
    path.write_text(text, encoding="utf-8")


def read_manifest(path: Path, format: str, version: int) -> dict[str, Any]:
    """The fields of the JSON manifest at `path` other than the header, once it is known to be
    an object of `format`, `version`. Raises `StageInputError` naming the file: missing,
    unreadable, not an object, or another format or version."""
    document = read_json(path)
    if not isinstance(document, dict):
        raise StageInputError(f"{path}: expected a JSON object, found {json_type(document)}")
    found = tuple(document.get(key) for key in HEADER)
    if found != (format, version) or isinstance(found[1], bool):  # JSON true == 1 in Python
        raise StageInputError(
            f"{path}: format {found[0]!r} version {found[1]!r}, expected format "
            f"{format!r} version {version}: written by another version of Loom; "
            "re-make it with this one"
        )
    return {key: value for key, value in document.items() if key not in HEADER}


def read_tensors(directory: str | Path, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The tensors of `directory/model.safetensors` (on CPU), which must hold every one of
    `names`. Raises `StageInputError` naming the file: missing, unreadable (truncated or
    corrupt) or without one of `names`. Shapes and dtypes are the caller's to check."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / TENSORS_FILE
    if not path.is_file():
        raise StageInputError(f"{path}: file not found")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise StageInputError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {err}"
        ) from None
    missing = [name for name in names if name not in tensors]
    if missing:
        raise StageInputError(f"{path}: missing tensors {missing} (has {sorted(tensors)})")
    return tensors


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as `save` writes it: detached, contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def load_module(directory: str | Path, module: torch.nn.Module) -> None:
    """Load `directory/model.safetensors` into `module` (built from its config.json);
    `StageInputError` naming the file if a tensor is missing or does not fit."""
    expected = module.state_dict()
    state = read_tensors(directory, list(expected))
    misfits = [
        f"{name} {tuple(state[name].shape)} for {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    if misfits:  # one line, not torch's page of them
        more = f" and {len(misfits) - 3} more" if len(misfits) > 3 else ""
        raise StageInputError(
            f"{Path(directory) / TENSORS_FILE}: weights do not fit the config: "
            f"{'; '.join(misfits[:3])}{more}"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise StageInputError(
            f"{Path(directory) / TENSORS_FILE}: weights do not fit the config: {detail}"
        ) from None
