"""Component names (as written in dvc.yaml `meta.component`) -> the module declaring `STAGE`."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util

from components.stage import Stage

COMPONENTS: dict[str, str] = {
    "text.stdlib_text": "components.text.stdlib_text.stage",
    "text.corpus": "components.text.corpus.stage",
    "text.bpe": "components.text.bpe.stage",
    "text.tokenize": "components.text.token_ids.stage",
    "text.word2vec": "components.text.word2vec.stage",
    "text.embedding_eval": "components.text.embedding_eval.stage",
    "vision.images": "components.vision.data.stage",
    "vision.image_folder": "components.vision.data.folder_stage",
    "vision.autoencoder": "components.vision.autoencoder.stage",
    "vision.encode_latents": "components.vision.autoencoder.encode_stage",
    "vision.train_diffusion": "components.vision.diffusion.stage",
    "vision.sample": "components.vision.diffusion.sample_stage",
    "vision.feature_net": "components.vision.features.stage",
    "vision.evaluate_diffusion": "components.vision.diffusion.evaluation.stage",
    "action.streams": "components.action.streams_stage",
    "action.extract_features": "components.action.features_stage",
    "action.train": "components.action.stage",
    "action.evaluate": "components.action.evaluate_stage",
    "detection.data": "components.detection.data.stage",
    "detection.detector": "components.detection.stage",
    "detection.evaluate": "components.detection.evaluation.stage",
}


class UnknownComponentError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def module_of(name: str) -> str:
    """Dotted module path of component `name`: a registered name, or the path of any
    importable module that declares `STAGE` (a project's own component: `my_pkg.my_stage`)."""
    if name in COMPONENTS:
        return COMPONENTS[name]
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec(name) is not None:
            return name
    raise UnknownComponentError(
        f"unknown component {name!r}: expected one of {sorted(COMPONENTS)}, or the path of a "
        "module that declares STAGE"
    )


def load(name: str) -> Stage:
    """The `Stage` declared by component `name`."""
    module = importlib.import_module(module_of(name))
    stage = getattr(module, "STAGE", None)
    if not isinstance(stage, Stage):
        raise UnknownComponentError(f"component {name!r}: module {module.__name__} has no STAGE")
    assert stage.name == name, f"{module_of(name)}.STAGE is named {stage.name!r}, not {name!r}"
    return stage
