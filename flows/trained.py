"""Find a trained model directory for a command that uses one (`loom detect`, `loom generate`).

    trained.model_dir(kind, root, run, model, scratch)

where `kind` (a `ModelKind`) names the component whose output it is and how to call it in
messages. The directory is, in this order: `--model DIR` as given; the model a `--run ID`
stage run logged (downloaded from MLflow into `scratch`); or the project's own output of that
component — the one present, or with `newest`, the one trained last when there are several.
Every failure is a `ModelNotFound` saying what to pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows import project

MODEL_TAG = "loom.model.model"  # models.MODEL_TAG_PREFIX + the output role "model"


class ModelNotFound(ValueError):
    """No model where the command looked, and what to pass instead."""


@dataclass(frozen=True)
class ModelKind:
    component: str  # e.g. "detection.detector"
    noun: str  # "detector", in messages
    stage: str  # the dvc.yaml stage group, e.g. "detector" (for `loom run <stage>`)
    newest: bool = False  # several in the project: take the newest instead of refusing


def model_dir(
    kind: ModelKind, root: Path | None, run: str | None, model: Path | None, scratch: Path
) -> Path:
    if run and model:
        raise ModelNotFound("pass --run or --model, not both")
    if model is not None:
        return model
    if root is None:
        raise ModelNotFound(f"not in a Loom project: pass --model DIR (a {kind.noun} directory)")
    if run:
        return _from_run(kind, root, run, scratch)
    return _in_project(kind, root)


def _from_run(kind: ModelKind, root: Path, ref: str, scratch: Path) -> Path:
    import mlflow.artifacts

    from flows import compare, tracking

    try:
        (found,) = compare.get_runs(root, [ref])
    except compare.CompareError as err:
        raise ModelNotFound(str(err)) from None
    tags = found.data.tags
    stage = tags.get(tracking.STAGE_TAG, "?")
    if tags.get(tracking.COMPONENT_TAG) != kind.component or MODEL_TAG not in tags:
        raise ModelNotFound(
            f"run {found.info.run_id} ({stage}) registered no {kind.noun}: pass the run of a "
            f"{kind.component} stage (`loom runs --stage {kind.stage}`)"
        )
    uri = tags[MODEL_TAG]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(scratch)))
    # the model's own config.json: the shallowest one beside weights (a diffusion model holds
    # its autoencoder's one level down)
    weights = [p.parent for p in local.rglob("model.safetensors")]
    configs = sorted(
        (d for d in weights if (d / "config.json").is_file()), key=lambda d: len(d.parts)
    )
    if not configs:
        raise ModelNotFound(
            f"{uri} (run {found.info.run_id}): no {kind.noun} directory in the model"
        )
    return configs[0]


def _in_project(kind: ModelKind, root: Path) -> Path:
    with project.dvc_repo(root) as repo:
        specs = [
            project.spec_of(repo, s, with_upstream=False) for s in project.pipeline_stages(repo)
        ]
    outputs = [
        root / spec.outputs["model"]
        for spec in specs
        if spec.component == kind.component and "model" in spec.outputs
    ]
    present = [p for p in outputs if (p / "config.json").is_file()]
    if len(present) == 1:
        return present[0]
    if not present:
        named = ", ".join(str(p.relative_to(root)) for p in outputs) or "none in dvc.yaml"
        raise ModelNotFound(
            f"no trained {kind.noun} in this project ({named}): run `loom run {kind.stage}` or "
            "`dvc pull`, or pass --model DIR / --run ID"
        )
    if kind.newest:
        return max(present, key=lambda p: (p / "config.json").stat().st_mtime)
    choices = ", ".join(str(p.relative_to(root)) for p in present)
    raise ModelNotFound(
        f"this project has several {kind.noun}s ({choices}): pass --model one of them"
    )
