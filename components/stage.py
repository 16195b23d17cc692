"""The contract between a component and the stage runner (`loom stage`).

A component module declares one `Stage`. The runner (in `flows/`, which owns tracking and
atomic I/O) validates the params section into `stage.config`, binds the named inputs and
outputs from `dvc.yaml`, calls `stage.run(config, io)` and records the returned `StageResult`.
Components never see MLflow, Prefect or DVC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StageInputError(ValueError):
    """Bad input data (missing file, empty corpus, undecodable text): the message says which."""


@dataclass(frozen=True)
class StageIO:
    """Paths a stage reads and writes.

    inputs:  name -> existing path (file or directory) declared in the stage's deps.
    outputs: name -> path to create. The runner points these into a scratch directory and
             moves them into place only after `run` returns, so a component writes plainly.
    work:    a directory that outlives a failed or killed run of this stage with the same
             config and inputs (checkpoints go here, so a rerun resumes); the runner removes
             it once the stage succeeds. None: nothing to resume from (e.g. in unit tests).
    """

    inputs: dict[str, Path]
    outputs: dict[str, Path]
    work: Path | None = None


@dataclass
class Dataset:
    """An input or output data set to record as an MLflow dataset (by reference)."""

    name: str
    path: Path
    context: str  # "input" | "output" | "train" | "val" ...
    num_rows: int | None = None


@dataclass
class StageResult:
    """What a stage reports back.

    metrics:   final scalar metrics, written to the stage's DVC metrics file and MLflow.
               Name wall-clock figures `*_seconds` or `*_per_second`: they go to MLflow
               only, so that the metrics file (a versioned output) is reproducible.
    curves:    step-wise series name -> [(step, value), ...], logged as MLflow metric history
               and written as the stage's DVC plots file.
    artifacts: small files worth attaching to the tracking run (large outputs go by reference).
    datasets:  data sets read or written, recorded with their DVC digest.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    """A component as the pipeline sees it.

    name:    registry name, e.g. "text.bpe" (used as `meta.component` in dvc.yaml).
    version: bump when outputs change meaning; recorded with every run.
    config:  dataclass type of the params section.
    inputs/outputs: the names `StageIO` carries.
    run:     (config, io) -> StageResult.
    key_metrics: the few metrics a run summary shows for this component.
    """

    name: str
    version: str
    config: type
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[Any, StageIO], StageResult]
    key_metrics: tuple[str, ...] = ()
