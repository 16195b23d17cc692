"""The models stages make, as MLflow models: logged, registered, and linked to their evaluations.

A component declares which outputs are models and how to serve them (`Stage.models`, each a
`components.stage.ServedModel`: output role, "module:function" loader, pip names), without
MLflow. After such a stage succeeds, `log_models` logs each as an MLflow pyfunc model whose
artifact is the output directory, and registers it under a stable name per pipeline branch
("text.word2vec.small": the component, then the stage's foreach key). So

    mlflow.pyfunc.load_model("models:/text.word2vec.small/latest").predict(["file"])

answers with the component's own object (`components.text.word2vec.serve`) in any process
that has this project installed: the wrapper (`LoomServedModel`) and the loader are imported,
not pickled, so a model loads with the code it is served with, and the artifact's own format
check (`components.artifact`) refuses one this code cannot read.

Lineage: the logged model and its registry version carry the stage, the component and its
version, the output path and its DVC md5, the run id and the git commit; the producing run
gets a `loom.model.<role>` tag naming the version it registered.

Evaluations are found from the data, not declared: a stage whose input has the DVC md5 of a
model logged in its experiment evaluated that model (`link_evaluated`), so its metrics are
logged with that model's id (`mlflow.log_metrics(..., model_id=...)`: they show among the
model's metrics, beside the training run's, which MLflow copies there when the model is
logged) and its run is tagged `loom.evaluated_model` = "models:/<name>/<version>". A stage
that itself makes models is not an evaluation of the models it reads (word2vec trains on the
tokenizer; its loss describes its own model).

Cost, on a 2-core machine against the SQLite store: ~1 s per model stage (`model_log_seconds`
on its run: importing `mlflow.pyfunc` ~0.2 s, which only this module does and only when a
stage has a model to log; opening the registry's store ~0.2 s; the rest SQLite commits and
copying the directory); one query per input for every other stage.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.stage import ServedModel, Stage
from flows import project, tracking

# Tags of a logged model and of its registry version (both get all of them).
MD5_TAG = "dvc.md5"  # the output directory's DVC md5 (as on datasets): how evaluations find it
OUTPUT_TAG = "loom.output"  # the output path, relative to the project
ROLE_TAG = "loom.model_role"  # the output's role in the component ("tokenizer", "model")
RUN_ID_TAG = "loom.run_id"  # the stage run that made it
# Tags of stage runs.
MODEL_TAG_PREFIX = "loom.model."  # + role: "models:/<name>/<version>" the run registered
EVALUATED_TAG = "loom.evaluated_model"  # "models:/<name>/<version>" (", "-joined) it evaluated
LOG_SECONDS_METRIC = "model_log_seconds"  # what logging and registering cost (MLflow only)

MAX_CANDIDATES = 10  # logged models with an input's md5 that `link_evaluated` looks through
WRAPPER = "LoomServedModel"  # the PythonModel class, built on first use (`__getattr__`)


class ModelLoggingError(tracking.TrackingError):
    """Logging or registering a stage's model failed: the stage fails with this message."""


@dataclass(frozen=True)
class Registered:
    """A model a stage run logged and registered."""

    role: str
    name: str  # registered model name
    version: str
    model_id: str  # the LoggedModel

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def registered_name(stage_name: str, component: str, role: str, several: bool = False) -> str:
    """The registry name of a stage's model: component name, then the stage's foreach key.

    "word2vec@small" of "text.word2vec" -> "text.word2vec.small"; a stage without a key ->
    "text.x"; a stage declaring `several` models puts the role before the key
    ("text.x.encoder.small"), so that no two share a name."""
    key = project.stage_key(stage_name)
    return ".".join(p for p in (component, role if several else "", key) if p)


def pinned(requirements: tuple[str, ...]) -> list[str]:
    """`name==version` for each distribution, at the version installed here (what the model
    was made and checked with; `pip install -c requirements.lock` makes those the lock's
    pins), plus cloudpickle, which reads the wrapper back. A local version label ("+cpu") is
    dropped: pip finds no "torch==2.13.0+cpu" on PyPI, and the plain pin matches it."""
    pins = []
    for dist in (*requirements, "cloudpickle"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoggingError(
                f"ServedModel requirement {dist!r} is not an installed distribution: name it "
                "as pip does (e.g. 'safetensors', 'torch')"
            ) from None
        pins.append(f"{dist}=={version.partition('+')[0]}")
    return pins


def resolve_loader(loader: str) -> Callable[[Path], Any]:
    """The function a "package.module:function" loader names (imported now)."""
    module_name, _, function = loader.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoggingError(f"ServedModel loader {loader!r}: cannot import: {err}") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise ModelLoggingError(
            f"ServedModel loader {loader!r}: module {module_name} has no function {function!r}"
        )
    return found


def plain_inputs(model_input: Any) -> Any:
    """What a model server hands `predict`, as the plain list a loader's `predict` takes:
    `mlflow models serve` turns JSON into a one-column DataFrame or an array; a Series or an
    array becomes a list, a one-column DataFrame the list of its column; anything else
    (a list from `load_model(...).predict([...])`) is passed as it is."""
    columns = getattr(model_input, "columns", None)
    if columns is not None:
        if len(columns) != 1:
            raise ValueError(
                f"expected one column of inputs, got a DataFrame with columns {list(columns)}"
            )
        return model_input.iloc[:, 0].tolist()
    if hasattr(model_input, "tolist") and hasattr(model_input, "shape"):
        return model_input.tolist()
    return model_input


def _wrapper_class() -> type:
    """The generic PythonModel: it holds only the output role and the loader's path (pickled
    with the model), and in `load_context` imports the loader and loads the artifact
    directory with it. Built on first use and kept as a module attribute under its own name,
    so that cloudpickle stores a reference to `flows.models.LoomServedModel`, not its code."""
    cls = globals().get(WRAPPER)
    if cls is not None:
        return cls
    from mlflow.pyfunc import PythonModel

    class LoomServedModel(PythonModel):
        """Serves `loader(context.artifacts[role])`: its `predict(inputs)` answers."""

        # MLflow would wrap `predict` to validate inputs against its type hints, and warns
        # that it has none; the served object checks its own inputs (MLflow's flag for this,
        # as its ChatModel subclasses use it).
        _skip_type_hint_validation = True

        def __init__(self, role: str, loader: str):
            self.role, self.loader = role, loader
            self.served: Any = None

        def load_context(self, context: Any) -> None:
            directory = Path(context.artifacts[self.role])
            self.served = resolve_loader(self.loader)(directory)

        # No annotations: MLflow would read them as an input schema for every model.
        def predict(self, context, model_input, params=None):
            return self.served.predict(plain_inputs(model_input))

    LoomServedModel.__qualname__ = WRAPPER
    globals()[WRAPPER] = LoomServedModel
    return LoomServedModel


def __getattr__(name: str) -> Any:
    """`flows.models.LoomServedModel` (what unpickling a logged model looks up)."""
    if name == WRAPPER:
        return _wrapper_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def log_models(
    root: Path, spec: project.StageSpec, stage: Stage, known: dict[str, str]
) -> list[Registered]:
    """Log and register each model `stage` declares, from its output now in place, in the
    active (stage) run; `known`: DVC md5 by path, the outputs' included. Any failure is a
    `ModelLoggingError` saying which model and why (the run is tagged with it too): a model
    the registry silently lacks would leave `models:/.../latest` pointing at an older one."""
    if not stage.models:
        return []
    import mlflow

    started = time.perf_counter()
    run = mlflow.active_run()
    if run is None:
        raise ModelLoggingError(f"stage {spec.name!r}: no active MLflow run to log models in")
    done = []
    for model in stage.models:
        name = registered_name(spec.name, stage.name, model.role, len(stage.models) > 1)
        path = spec.outputs[model.role]
        try:
            done.append(_log_one(root, spec, stage, model, name, path, known, run))
        except Exception as err:
            message = (
                f"stage {spec.name!r}: logging output {model.role!r} ({path}) as MLflow model "
                f"{name!r} failed: {type(err).__name__}: {err}. The output is in place, but the "
                "stage failed, so DVC does not record it; run the stage again once that is fixed"
            )
            with contextlib.suppress(Exception):  # the store itself may be what failed
                mlflow.set_tag(tracking.ERROR_TAG, message[:5000])
            raise ModelLoggingError(message) from err
    mlflow.log_metric(LOG_SECONDS_METRIC, round(time.perf_counter() - started, 3))
    return done


def _log_one(
    root: Path,
    spec: project.StageSpec,
    stage: Stage,
    model: ServedModel,
    name: str,
    path: str,
    known: dict[str, str],
    run: Any,
) -> Registered:
    import mlflow.pyfunc

    resolve_loader(model.loader)  # a loader that cannot be imported is no model to register
    md5 = known.get(path) or project.digests(root, [path]).get(path, "")
    run_tags = run.data.tags
    tags = {
        tracking.STAGE_TAG: spec.name,
        tracking.COMPONENT_TAG: stage.name,
        tracking.COMPONENT_VERSION_TAG: stage.version,
        ROLE_TAG: model.role,
        OUTPUT_TAG: path,
        MD5_TAG: md5,
        RUN_ID_TAG: run.info.run_id,
        tracking.GIT_COMMIT_TAG: run_tags.get(tracking.GIT_COMMIT_TAG, ""),
        tracking.GIT_DIRTY_TAG: run_tags.get(tracking.GIT_DIRTY_TAG, ""),
    }
    with _quiet_logging(), _no_distribution_scan():
        info = mlflow.pyfunc.log_model(
            name=name.replace(".", "-"),  # a LoggedModel name may not hold "."
            python_model=_wrapper_class()(model.role, model.loader),
            artifacts={model.role: str(root / path)},
            pip_requirements=pinned(model.requirements),
            registered_model_name=name,
            tags=tags,
        )
    version = info.registered_model_version
    if version is None:
        raise ModelLoggingError(f"the registry returned no version for {name!r}")
    done = Registered(model.role, name, str(version), info.model_id)
    mlflow.set_tag(f"{MODEL_TAG_PREFIX}{model.role}", done.uri)
    return done


@contextlib.contextmanager
def _no_distribution_scan() -> Iterator[None]:
    """Spare `log_model` the 1.7 s it spends mapping every installed module to its
    distribution (`importlib_metadata.packages_distributions()`, a walk over every file of
    every installed package), more than the rest of logging a model together.

    MLflow builds that map only to warn when the pins do not match this environment
    (`warn_dependency_requirement_mismatches`), and `pinned` read the pins from this
    environment's own metadata. With the map (a private, per-process cache) empty for the
    call, the check still runs: it compares each pin with `importlib.metadata.version`, the
    map being only its fallback for a module without distribution metadata. Left alone when
    MLflow has already built the map in this process, or no longer has such a cache."""
    from mlflow.utils import requirements_utils

    caches = ("_MODULES_TO_PACKAGES", "_PACKAGES_TO_MODULES")
    if getattr(requirements_utils, caches[0], True) is not None:
        yield
        return
    saved = {name: getattr(requirements_utils, name, None) for name in caches}
    setattr(requirements_utils, caches[0], {})
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(requirements_utils, name, value)


class _DropKnownWarnings(logging.Filter):
    """Drops MLflow's warning that a Python object as `python_model` is pickled: what this
    module pickles is two strings and a reference to its own class (see `_wrapper_class`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passing a Python object as `python_model`")


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """`log_model` without the noise a stage log does not need: the pickling warning above,
    and the progress bars of copying the output directory into the model."""
    logger, drop = logging.getLogger("mlflow.pyfunc"), _DropKnownWarnings()
    logger.addFilter(drop)
    try:
        with tracking.environ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
            yield
    finally:
        logger.removeFilter(drop)


def link_evaluated(
    spec: project.StageSpec, stage: Stage, known: dict[str, str]
) -> list[str | None]:
    """The ids to log this stage's metrics with, one `log_metrics(..., model_id=)` each: the
    LoggedModel ids of the models it evaluated, or [None] (the run alone) when it evaluated
    none. An input whose DVC md5 (`known`, by path) is a logged model's `dvc.md5`, in the
    stage's experiment, is that model (the newest when several runs made the same bytes).
    The run is tagged `loom.evaluated_model` with their registry URIs and records them as
    its model inputs. A stage that makes models evaluates none (see the module docstring).

    One query per input, on the tracking store the run already uses: every stage with
    inputs asks, and opening the registry's store as well would cost each ~0.2 s."""
    if stage.models or not spec.inputs:
        return [None]
    import mlflow
    from mlflow.entities import LoggedModelInput, LoggedModelStatus

    run = mlflow.active_run()
    if run is None:
        return [None]
    found = []
    for role, path in spec.inputs.items():
        md5 = known.get(path)
        if not md5:
            continue
        try:
            hits = mlflow.search_logged_models(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"tags.`{MD5_TAG}` = '{md5}'",
                order_by=[{"field_name": "creation_timestamp", "ascending": False}],
                max_results=MAX_CANDIDATES,
                output_format="list",
            )
        except Exception as err:
            raise tracking.TrackingError(
                f"stage {spec.name!r}: looking up the logged model that input {role!r} ({path}, "
                f"DVC md5 {md5}) may be failed: {type(err).__name__}: {err}"
            ) from err
        # One whose logging failed (its artifacts never arrived) is FAILED: not that model.
        found += [m for m in hits if m.status == LoggedModelStatus.READY][:1]
    if not found:
        return [None]
    mlflow.set_tag(EVALUATED_TAG, ", ".join(map(_registry_uri, found)))
    mlflow.MlflowClient().log_inputs(
        run.info.run_id, models=[LoggedModelInput(m.model_id) for m in found]
    )
    return [m.model_id for m in found]


def _registry_uri(model: Any) -> str:
    """ "models:/<name>/<version>" of a LoggedModel's latest registry version (MLflow lists
    them in its `mlflow.modelVersions` tag), else "models:/<model id>"."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    try:
        versions = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        latest = max(versions, key=lambda v: int(v["version"]))
        return f"models:/{latest['name']}/{latest['version']}"
    except (ValueError, KeyError, TypeError):  # not registered (or a tag of another shape)
        return f"models:/{model.model_id}"
