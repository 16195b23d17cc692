"""Component names (as written in dvc.yaml `meta.component`) -> the module declaring `STAGE`."""

from __future__ import annotations

import importlib

from components.stage import Stage

COMPONENTS: dict[str, str] = {
    "text.stdlib_text": "components.text.stdlib_text.stage",
    "text.corpus": "components.text.corpus.stage",
    "text.bpe": "components.text.bpe.stage",
    "text.tokenize": "components.text.token_ids.stage",
    "text.word2vec": "components.text.word2vec.stage",
    "text.embedding_eval": "components.text.embedding_eval.stage",
}


class UnknownComponentError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def module_of(name: str) -> str:
    """Dotted module path of component `name`."""
    if name not in COMPONENTS:
        raise UnknownComponentError(
            f"unknown component {name!r}: expected one of {sorted(COMPONENTS)}"
        )
    return COMPONENTS[name]


def load(name: str) -> Stage:
    """The `Stage` declared by component `name`."""
    stage = importlib.import_module(module_of(name)).STAGE
    assert stage.name == name, f"{module_of(name)}.STAGE is named {stage.name!r}, not {name!r}"
    return stage
