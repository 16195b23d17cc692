"""The contract between a component and the stage runner (`loom stage`).

A component module declares one `Stage`. The runner (in `flows/`, which owns tracking and
atomic I/O) validates the params section into `stage.config`, binds the named inputs and
outputs from `dvc.yaml`, calls `stage.run(config, io)` and records the returned `StageResult`.
Components never see MLflow, Prefect or DVC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


class StageInputError(ValueError):
    """Bad input data (missing file, empty corpus, undecodable text): the message says which."""


class StageLogger:
    """Live tracking: what a component reports while it works, not only when it is done.

    The runner binds it to the stage's MLflow run (so a training's loss curve is there while it
    trains, and stays after a crash) and collects the metric series into the stage's DVC
    plots file; it records on rank 0 only. This base class records nothing (a component run
    outside Loom); `RecordingLogger` keeps every call, for unit tests.
    """

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Scalars at training step `step` (MLflow metric history, one plot row per step)."""

    def log_image(self, name: str, step: int, image: np.ndarray | bytes) -> None:
        """An image at `step`: uint8 [H, W] or [H, W, 3|4], or PNG bytes."""

    def log_text(self, name: str, text: str) -> None:
        """A small text file `name` (e.g. "samples.md") attached to the run."""


class RecordingLogger(StageLogger):
    """Keeps every call: `metrics` [(step, {name: value})], `images` [(name, step, image)],
    `texts` {name: text}. `series()` turns the metrics into curves name -> [(step, value)]."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.images: list[tuple[str, int, np.ndarray | bytes]] = []
        self.texts: dict[str, str] = {}

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.metrics.append((int(step), {k: float(v) for k, v in metrics.items()}))

    def log_image(self, name: str, step: int, image: np.ndarray | bytes) -> None:
        self.images.append((name, int(step), image))

    def log_text(self, name: str, text: str) -> None:
        self.texts[name] = text

    def series(self) -> dict[str, list[tuple[int, float]]]:
        curves: dict[str, list[tuple[int, float]]] = {}
        for step, values in self.metrics:
            for name, value in values.items():
                curves.setdefault(name, []).append((step, value))
        return curves


@dataclass(frozen=True)
class Output:
    """A file or directory inside the stage's output `role` ("" = the output itself).

    What a component names in `StageResult.artifacts` / `Dataset.path` for something it wrote:
    the runner resolves it where the output lands after the swap, so no component hands back a
    scratch path."""

    role: str
    path: str = ""


@dataclass(frozen=True)
class StageIO:
    """Paths a stage reads and writes.

    inputs:  name -> existing path (file or directory) declared in the stage's deps.
    outputs: name -> path to create. The runner points these into a scratch directory and
             moves them into place only after `run` returns, so a component writes plainly.
    work:    a directory that outlives a failed or killed run of this stage with the same
             config and inputs (checkpoints go here, so a rerun resumes); the runner removes
             it once the stage succeeds. None: nothing to resume from (e.g. in unit tests).
    log:     live tracking (`StageLogger`); the runner binds MLflow, unit tests a recorder.
    """

    inputs: dict[str, Path]
    outputs: dict[str, Path]
    work: Path | None = None
    log: StageLogger = field(default_factory=StageLogger)

    def path(self, ref: Path | Output) -> Path:
        """Where `ref` is now: an `Output` inside this IO's outputs, or a plain path as is."""
        return self.outputs[ref.role] / ref.path if isinstance(ref, Output) else ref


@dataclass
class Dataset:
    """An input or output data set to record as an MLflow dataset (by reference)."""

    name: str
    path: Path | Output  # an input's path, or what this stage wrote
    context: str  # "input" | "output" | "train" | "val" ...
    num_rows: int | None = None


@dataclass
class StageResult:
    """What a stage reports back.

    metrics:   final scalar metrics, written to the stage's DVC metrics file and MLflow.
               Name wall-clock figures `*_seconds` or `*_per_second`: they go to MLflow
               only, so that the metrics file (a versioned output) is reproducible.
    curves:    step-wise series name -> [(step, value), ...], logged as MLflow metric history
               and written as the stage's DVC plots file (with what `io.log` reported live).
    artifacts: small files this stage wrote, worth attaching to the tracking run (large
               outputs go by reference), each named by output role + relative path.
    datasets:  data sets read or written, recorded with their DVC digest.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: list[Output] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)


@dataclass(frozen=True)
class ServedModel:
    """An output of a stage that is a model, and how to serve it, declared without MLflow.

    role:   the output (a directory) that holds the model.
    loader: "package.module:function", called with that directory; returns an object whose
            `predict(inputs)` answers a batch (e.g. a list of strings). The same object serves
            in a notebook, a test or a model server, so the loader imports no MLflow.
    requirements: the distributions (pip names) the loader's code imports beyond the project
            itself, e.g. ("numpy", "torch"). The runner pins them to the versions installed
            where the model was made, so the logged model's environment is exact without
            MLflow spending seconds inferring it.

    After a stage succeeds the runner logs each declared model (with the directory as its
    artifact) and registers it; which stages evaluate it is found from the data (their input
    is that directory, by DVC md5), not declared.
    """

    role: str
    loader: str
    requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    """A component as the pipeline sees it.

    name:    registry name, e.g. "text.bpe" (used as `meta.component` in dvc.yaml).
    version: bump when outputs change meaning; recorded with every run.
    config:  dataclass type of the params section.
    inputs/outputs: the names `StageIO` carries.
    optional_inputs: inputs a dvc.yaml stage may leave out (a diffusion model's word2vec
             vectors, used only when its config says so): absent from `io.inputs` then, so a
             stage that does not read one does not depend on it either.
    run:     (config, io) -> StageResult.
    key_metrics: the few metrics a run summary shows for this component.
    distributed: `run` may run on several processes under torchrun (`runtime.<stage>.nproc`
             in params.yaml): every rank calls it with the same config and IO; the component
             writes its outputs on rank 0 only (the training engine does).
    models:  the outputs that are models (`ServedModel`): logged and registered after each
             successful run, so they load by name (`models:/<name>/latest`).
    """

    name: str
    version: str
    config: type[Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[Any, StageIO], StageResult]
    key_metrics: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    distributed: bool = False
    models: tuple[ServedModel, ...] = ()

    def __post_init__(self) -> None:
        """A model must be one of the outputs, loaded by a "module:function" path: checked at
        import, so a typo fails every run of the component at once, not after training."""
        for model in self.models:
            if model.role not in self.outputs:
                raise ValueError(
                    f"component {self.name!r}: ServedModel role {model.role!r} is not one of "
                    f"its outputs {list(self.outputs)}"
                )
            module, sep, function = model.loader.partition(":")
            if not (sep and module and function.isidentifier()):
                raise ValueError(
                    f"component {self.name!r}: ServedModel loader {model.loader!r}: expected "
                    "'package.module:function'"
                )
        roles = [m.role for m in self.models]
        if len(set(roles)) != len(roles):
            raise ValueError(f"component {self.name!r}: two ServedModels for one output: {roles}")
