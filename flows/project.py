"""The DVC project as Loom sees it: stage specs from dvc.yaml, the stage graph, hashes, commits.

dvc.yaml is the one declaration of the pipeline. Everything here reads it through DVC's own
API (so foreach/matrix/templating resolve exactly as `dvc repro` resolves them) and writes
dvc.lock through DVC's own stage methods (so the lock is byte-identical to `dvc repro`'s).
DVC objects are not thread-safe: callers in threads serialise through `DVC_LOCK`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage as DvcStage

DVC_LOCK = threading.RLock()


class ProjectError(ValueError):
    """dvc.yaml / a stage declaration is missing or inconsistent."""


@dataclass
class StageSpec:
    """One resolved stage of dvc.yaml (after foreach/matrix expansion).

    component: `meta.component` (registry name) or None for a plain shell stage.
    config_key: dotted params key of the component's config (`meta.config`, else the
                stage's first `params` entry, else its name).
    inputs/outputs: `meta.inputs` / `meta.outputs`, component names -> paths.
    """

    name: str
    cmd: str
    wdir: Path
    component: str | None
    config_key: str | None
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)


def find_root(start: Path | None = None) -> Path:
    """The DVC root above `start`; without one, $DVC_ROOT (set when DVC launched us) or the
    nearest parent of the working directory with a `.dvc/`."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for cand in (here, *here.parents):
        if (cand / ".dvc").is_dir():
            return cand
    raise ProjectError(
        f"{here}: not inside a DVC project (no .dvc/ directory above it); run `dvc init`"
    )


def open_repo(root: Path) -> Repo:
    from dvc.repo import Repo

    return Repo(str(root))


def _rel(repo: Repo, path: str) -> str:
    return os.path.relpath(path, repo.root_dir)


def spec_of(repo: Repo, stage: DvcStage) -> StageSpec:
    from dvc.dependency.param import ParamsDependency

    meta: dict[str, Any] = dict(stage.meta or {})
    params = [p for d in stage.deps if isinstance(d, ParamsDependency) for p in (d.params or [])]
    component = meta.get("component")
    config_key = meta.get("config") or (
        params[0] if params else (stage.name if component else None)
    )
    graph = repo.index.graph
    return StageSpec(
        name=stage.addressing,
        cmd=stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd),
        wdir=Path(stage.wdir),
        component=component,
        config_key=config_key,
        inputs={str(k): str(v) for k, v in (meta.get("inputs") or {}).items()},
        outputs={str(k): str(v) for k, v in (meta.get("outputs") or {}).items()},
        deps=[_rel(repo, d.fs_path) for d in stage.deps if not isinstance(d, ParamsDependency)],
        params=params,
        outs=[_rel(repo, o.fs_path) for o in stage.outs if not (o.is_metric or o.is_plot)],
        metrics=[_rel(repo, o.fs_path) for o in stage.outs if o.is_metric],
        plots=[_rel(repo, o.fs_path) for o in stage.outs if o.is_plot],
        upstream=[s.addressing for s in graph.successors(stage)] if stage in graph else [],
    )


def pipeline_stages(repo: Repo) -> list[DvcStage]:
    """All pipeline stages (dvc.yaml stages, not `.dvc` data sources), in topological order."""
    import networkx as nx
    from dvc.stage import PipelineStage

    graph = repo.index.graph
    # DVC edges point from a stage to the stages it depends on.
    order = list(
        reversed(list(nx.lexicographical_topological_sort(graph, key=lambda s: s.addressing)))
    )
    return [s for s in order if isinstance(s, PipelineStage)]


def load_spec(root: Path, name: str) -> StageSpec:
    """The resolved spec of stage `name` (e.g. "bpe@small")."""
    with DVC_LOCK:
        repo = open_repo(root)
        try:
            by_name = {s.addressing: s for s in pipeline_stages(repo)}
            if name not in by_name:
                raise ProjectError(
                    f"dvc.yaml: no stage named {name!r}; stages are {sorted(by_name)}"
                )
            return spec_of(repo, by_name[name])
        finally:
            repo.close()


def select(repo: Repo, targets: list[str]) -> list[DvcStage]:
    """Stages to run for `targets` (names or foreach/matrix group names) plus their upstream,
    in topological order; all pipeline stages when `targets` is empty."""
    import networkx as nx

    ordered = pipeline_stages(repo)
    if not targets:
        return ordered
    names = {s.addressing for s in ordered}
    wanted: set = set()
    for target in targets:
        hits = [
            s for s in ordered if s.addressing == target or s.addressing.split("@")[0] == target
        ]
        if not hits:
            raise ProjectError(
                f"dvc.yaml: no stage or stage group named {target!r}; stages are {sorted(names)}"
            )
        for stage in hits:
            wanted.add(stage)
            wanted.update(nx.descendants(repo.index.graph, stage))
    return [s for s in ordered if s in wanted]


def changed(stage: DvcStage) -> bool:
    """Whether DVC would re-run `stage` now (deps, params, cmd or outs differ from dvc.lock)."""
    with DVC_LOCK, stage.repo.lock:
        return stage.changed()


def commit(root: Path, name: str) -> None:
    """Record a finished stage in dvc.lock and the DVC cache, exactly as `dvc repro` does."""
    with DVC_LOCK:
        repo = open_repo(root)
        try:
            with repo.lock:
                (stage,) = [s for s in pipeline_stages(repo) if s.addressing == name]
                stage.save()
                stage.commit()
                stage.dump(update_pipeline=False)
        finally:
            repo.close()


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    """DVC's md5 for each existing path (a directory gets DVC's `.dir` digest).

    Uses DVC's own hashing (and its state cache), so the values equal what dvc.lock records.
    """
    from dvc_data.hashfile.build import build

    out: dict[str, str] = {}
    with DVC_LOCK:
        repo = open_repo(root)
        try:
            for path in paths:
                full = os.path.join(repo.root_dir, path)
                if not os.path.exists(full):
                    continue
                _, _, obj = build(repo.cache.local, full, repo.fs, "md5", ignore=repo.dvcignore)
                out[path] = obj.hash_info.value
        finally:
            repo.close()
    return out
