"""The DVC project as Loom sees it: stage specs from dvc.yaml, the stage graph, hashes, commits.

dvc.yaml is the one declaration of the pipeline. Everything here reads it through DVC's own
API (so foreach/matrix/templating resolve exactly as `dvc repro` resolves them) and writes
dvc.lock through DVC's own stage methods (so the lock is byte-identical to `dvc repro`'s).
DVC objects are not thread-safe: callers in threads serialise through `DVC_LOCK`, which
`dvc_repo` holds while a repo is open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flows.params import parse_yaml

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
    cmd: str  # as dvc.yaml has it (a list of commands joined by " && ")
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
    commands: list[str] = field(default_factory=list)  # the cmd's commands, run in turn

    def __post_init__(self) -> None:
        if not self.commands and self.cmd:
            self.commands = [self.cmd]


# What a stage name may be: DVC's names, and foreach/matrix keys after the "@". Keys come from
# params (settable by `-S` and by a deployment's `overrides`) and end up in the stage's cmd.
STAGE_NAME = re.compile(r"[A-Za-z0-9_.-]+(@[A-Za-z0-9_.-]+)?")


def stage_group(name: str) -> str:
    """A stage's foreach/matrix group: its name before "@" ("word2vec@small" -> "word2vec";
    DVC's "path/dvc.yaml:NAME" addresses too). Its `runtime.<group>` knobs, its metrics'
    nesting and its Prefect `group:` tag all go by it."""
    return _split_stage(name)[0]


def stage_key(name: str) -> str:
    """A stage's foreach/matrix key ("word2vec@small" -> "small"; "" for a plain stage)."""
    return _split_stage(name)[1]


def _split_stage(name: str) -> tuple[str, str]:
    group, _, key = name.rpartition(":")[2].partition("@")
    return group, key


def check_stage_name(name: str) -> None:
    if not STAGE_NAME.fullmatch(name):
        base, _, key = name.partition("@")
        what = f"foreach/matrix key {key!r} (from params.yaml)" if key else f"name {name!r}"
        raise ProjectError(
            f"dvc.yaml: stage {name!r}: its {what} is not a plain identifier: use letters, "
            "digits, '_', '.' and '-' only"
        )


def command_argv(spec: StageSpec, command: str) -> list[str]:
    """One command of a stage's cmd as argv. Loom runs stage commands without a shell, so
    nothing in a cmd (stage names and paths interpolated from params among it) is ever
    interpreted by one: shell syntax is refused here rather than passed on as arguments."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        tokens = list(lexer)
    except ValueError as err:  # an unclosed quote
        raise ProjectError(f"dvc.yaml: stage {spec.name!r}: cmd {command!r}: {err}") from None
    shell = [
        t for t in tokens if set(t) <= set("();<>|&") or t.startswith("#") or set(t) & set("$`")
    ]
    if shell or not tokens:
        what = f"shell syntax {shell[0]!r}" if shell else "no command"
        raise ProjectError(
            f"dvc.yaml: stage {spec.name!r}: cmd {command!r} has {what}; Loom runs stage "
            "commands without a shell: make it one plain command (a script can do the rest)"
        )
    return shlex.split(command)


def covered(path: str, declared: list[str]) -> bool:
    """Whether `path` is one of the `declared` deps/outs or lies inside one of them."""
    p = Path(path)
    return any(p == Path(d) or Path(d) in p.parents for d in declared)


def find_root(start: Path | None = None) -> Path:
    """The DVC project the work happens in: the nearest directory with a `.dvc/` at or above
    `start` (default: the working directory, where DVC and Loom run a stage's cmd).

    $DVC_ROOT is not trusted for this: `dvc exp run --temp` and `dvc queue` run each experiment
    in a copy of the repository and set $DVC_ROOT to the *parent* workspace, which a stage
    must never write to (`workspace_root` is that parent, for the tracking store).
    """
    here = Path(start or Path.cwd()).resolve()
    for cand in (here, *here.parents):
        if (cand / ".dvc").is_dir():
            return cand
    raise ProjectError(
        f"{here}: not inside a DVC project (no .dvc/ directory above it); run `dvc init`"
    )


def workspace_root(root: Path) -> Path:
    """The user's workspace for project `root`: `root` itself, except in a DVC experiment
    run in a temporary copy (`dvc exp run --temp`, `dvc queue start`), where it is the parent
    workspace DVC names in $DVC_ROOT. Workspace state that must outlive the copy (the embedded
    MLflow store) lives there."""
    parent = os.environ.get("DVC_ROOT")
    if parent and os.environ.get("DVC_EXP_NAME") and (Path(parent) / ".dvc").is_dir():
        return Path(parent).resolve()
    return Path(root).resolve()


@contextlib.contextmanager
def dvc_repo(root: Path) -> Iterator[Repo]:
    """The DVC repo at `root`, open while the block runs, under `DVC_LOCK`; closed after."""
    from dvc.repo import Repo

    with DVC_LOCK:
        # Importing DVC installs its own INFO-level console handlers; Loom reports for itself.
        logging.getLogger("dvc").setLevel(logging.WARNING)
        repo = Repo(str(root))
        try:
            yield repo
        finally:
            repo.close()


def _rel(repo: Repo, path: str) -> str:
    return os.path.relpath(path, repo.root_dir)


def spec_of(repo: Repo, stage: DvcStage, with_upstream: bool = True) -> StageSpec:
    from dvc.dependency.param import ParamsDependency

    meta: dict[str, Any] = dict(stage.meta or {})
    params = [p for d in stage.deps if isinstance(d, ParamsDependency) for p in (d.params or [])]
    component = meta.get("component")
    config_key = meta.get("config") or (
        params[0] if params else (stage.name if component else None)
    )
    check_stage_name(stage.name)
    graph = repo.index.graph if with_upstream else None
    raw = stage.cmd.splitlines() if isinstance(stage.cmd, str) else list(stage.cmd)
    commands = [c for c in raw if c.strip()]  # DVC runs each line of a cmd in turn
    return StageSpec(
        name=stage.addressing,
        cmd=" && ".join(commands),
        commands=commands,
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
        upstream=[s.addressing for s in graph.successors(stage)]
        if graph and stage in graph
        else [],
    )


def pipeline_stages(repo: Repo) -> list[DvcStage]:
    """All pipeline stages (not `.dvc` data sources), in the order `dvc repro` runs them."""
    return select(repo, [])


def stage_named(repo: Repo, name: str) -> DvcStage:
    """Stage `name` of this repo's dvc.yaml (resolving only what that stage needs)."""
    from dvc.exceptions import DvcException

    try:
        found = repo.stage.collect(f"{os.path.join(repo.root_dir, 'dvc.yaml')}:{name}")
    except DvcException:
        found = []
    if len(found) != 1:
        names = sorted(s.addressing for s in pipeline_stages(repo))
        raise ProjectError(f"dvc.yaml: no stage named {name!r}; stages are {names}")
    return found[0]


def load_spec(root: Path, name: str, attempts: int = 60) -> StageSpec:
    """The resolved spec of stage `name` (e.g. "bpe@small"), without its upstream.

    DVC rewrites dvc.lock in place when `loom run` commits a finished stage; a stage process
    starting at that moment (`--jobs 2`) may read it half-written. That is retried; a lock
    file still invalid after fifteen seconds is reported as DVC reports it (one second, then
    five, were too short on a 2-core machine under load: CI runs read it half-written for
    longer, while the test suite's other workers filled both cores).
    """
    from dvc.exceptions import DvcException

    for attempt in range(attempts):
        try:
            with dvc_repo(root) as repo:
                spec = spec_of(repo, stage_named(repo, name), with_upstream=False)
                for stage in repo.index.stages:  # a bad key anywhere in params fails all
                    check_stage_name(stage.name)
                return spec
        # a half-written lock reaches here as DVC's error, or as ours when it broke the
        # listing of stage names (`stage_named`'s message); both are retried
        except (DvcException, ProjectError) as err:
            if attempt == attempts - 1 or "dvc.lock" not in str(err):
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def select(repo: Repo, targets: list[str]) -> list[DvcStage]:
    """Stages to run for `targets` (names or foreach/matrix group names; all of dvc.yaml when
    empty) plus their upstream, planned exactly as `dvc repro TARGETS` plans them."""
    from dvc.exceptions import DvcException
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage import PipelineStage

    # Address stages through this repo's dvc.yaml: DVC resolves bare names against the cwd.
    project_file = os.path.join(repo.root_dir, "dvc.yaml")
    resolved = [t if ":" in t else f"{project_file}:{t}" for t in targets] or [project_file]
    try:
        stages = collect_stages(repo, resolved)
    except DvcException as err:
        raise ProjectError(f"dvc.yaml: {err}") from None
    steps = plan_repro(get_active_graph(repo.index.graph), stages)
    return [s for s in steps if isinstance(s, PipelineStage)]


def changed(stage: DvcStage) -> bool:
    """Whether DVC would re-run `stage` now (deps, params, cmd or outs differ from dvc.lock)."""
    with DVC_LOCK, stage.repo.lock:
        return stage.changed()


def locked_stages(root: Path) -> list[str]:
    """Stage names in dvc.lock, in file order."""

    try:
        data = parse_yaml((Path(root) / "dvc.lock").read_text()) or {}
    except FileNotFoundError:
        return []
    return list(data.get("stages") or {})


def upstream_params(root: Path, deps: list[str]) -> dict[str, dict[str, Any]]:
    """The params each upstream stage of `deps` ran with, as dvc.lock records them: stage
    name -> {key within its params entries: value}, every stage whose outputs `deps` reach
    (transitively, through the upstream stages' own deps). Stages without params are left out.

    dvc.lock, not params.yaml: it is what made the outputs on disk, and DVC runs a stage only
    once its upstream is up to date, so the two agree whenever a stage runs.
    """
    import yaml

    try:
        locked = (parse_yaml((Path(root) / "dvc.lock").read_text()) or {}).get("stages")
    except (OSError, yaml.YAMLError):  # none yet, or being rewritten by a sibling: no lineage
        return {}
    locked = locked or {}
    producers: list[tuple[str, str]] = []  # (out path, stage)
    for name, entry in locked.items():
        for out in (entry or {}).get("outs") or []:
            producers.append((str(out.get("path", "")), name))

    found: dict[str, dict[str, Any]] = {}
    todo, seen = list(deps), set()
    while todo:
        path = todo.pop()
        for out, name in producers:
            if name in seen or not covered(path, [out]):
                continue
            seen.add(name)
            entry = locked[name] or {}
            values: dict[str, Any] = {}
            for entries in (entry.get("params") or {}).values():
                for key, value in (entries or {}).items():
                    # `bpe.small: {...}` (a whole section) -> its keys; `train.lr: 0.1` as it is
                    values.update(value if isinstance(value, dict) else {key: value})
            if values:
                found[name] = values
            todo.extend(str(d.get("path", "")) for d in entry.get("deps") or [])
    return dict(sorted(found.items()))


def commit(root: Path, name: str, order: list[str] | None = None) -> None:
    """Record a finished stage in dvc.lock and the DVC cache, exactly as `dvc repro` does.

    DVC appends a new stage's entry when it finishes, so concurrent runs would order dvc.lock
    by finishing time. With `order` (entries present before the run, then the run's plan),
    entries are put where a sequential `dvc repro` would have put them.
    """
    from dvc.utils.serialize import modify_yaml

    with dvc_repo(root) as repo, repo.lock:
        stage = stage_named(repo, name)
        stage.save()
        stage.commit()
        stage.dump(update_pipeline=False)
        if order is not None:
            rank: dict[str, int] = {}
            for n in order:
                rank.setdefault(n, len(rank))
            lock = os.path.join(repo.root_dir, "dvc.lock")
            # A round-trip rewrite of dvc.lock costs ~1 s; read it fast first: one stage at
            # a time in plan order, DVC's append already is the right order.
            with open(lock, encoding="utf-8") as f:
                names = list((parse_yaml(f.read()) or {}).get("stages") or {})
            if names == sorted(names, key=lambda n: rank.get(n, len(rank))):
                return
            with modify_yaml(lock) as data:
                entries = data["stages"]
                ordered = sorted(entries, key=lambda n: rank.get(n, len(rank)))
                if ordered != list(entries):
                    items = [(n, entries[n]) for n in ordered]
                    entries.clear()
                    entries.update(items)


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    """DVC's md5 for each existing path (a directory gets DVC's `.dir` digest).

    Uses DVC's own hashing (and its state cache), so the values equal what dvc.lock records.
    """
    from dvc_data.hashfile.build import build

    out: dict[str, str] = {}
    with dvc_repo(root) as repo:
        for path in paths:
            full = os.path.join(repo.root_dir, path)
            if not os.path.exists(full):
                continue
            _, _, obj = build(repo.cache.local, full, repo.fs, "md5", ignore=repo.dvcignore)
            out[path] = cast(str, obj.hash_info.value)  # set: build() just hashed it
    return out


REMOTE_ENV = "LOOM_DVC_REMOTE"  # a worker's DVC remote URL, set by the deployment's job variables


def _remote(repo: Repo) -> str | None:
    """The remote named by $LOOM_DVC_REMOTE (registered in the workspace's local config)."""
    url = os.environ.get(REMOTE_ENV, "").strip()
    if not url:
        return None
    with repo.config.edit("local") as conf:
        conf["remote"]["loom-env"] = {"url": url}
    return "loom-env"


def pull(root: Path, targets: list[str]) -> int:
    """Fetch and check out what `targets` (stage names) depend on and produce, from the DVC
    remote; whatever the remote lacks is left for the stages to make. Returns how many files
    were fetched (DVC's `repo.pull` returns its checkout's changes with the count:
    `{"added": [...], ..., "stats": {"fetched": N, "added": ..., ...}}`).

    An output that is not in dvc.lock yet (a fresh clone whose stage never ran) has no hash
    to check out: DVC warns "No file hash info found for '<path>'. It won't be created." for
    each (twice in a worker, whose root logger prints them again), and `allow_missing=True`
    is exactly about those. That warning is dropped while pulling; DVC's others pass.
    """
    from dvc.exceptions import CheckoutError

    no_hash_yet = "No file hash info found for '%s'. It won't be created."  # dvc_data's text

    class NotLockedYet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.msg != no_hash_yet

    quiet = NotLockedYet()
    checkout_loggers = [
        logging.getLogger(name)
        for name in ("dvc_data.index.checkout", "dvc_data.hashfile.checkout")
    ]
    for logger in checkout_loggers:
        logger.addFilter(quiet)
    try:
        with dvc_repo(root) as repo:
            try:  # repo.pull takes DVC's repo lock itself
                result = repo.pull(
                    targets=targets or None,
                    with_deps=True,
                    allow_missing=True,
                    remote=_remote(repo),
                )
            except CheckoutError as err:  # DVC puts the fetch count in the error's result too
                result = err.result
    finally:
        for logger in checkout_loggers:
            logger.removeFilter(quiet)
    return int(result["stats"]["fetched"])


def push(root: Path, targets: list[str]) -> int:
    """Upload the committed outputs of `targets` to the DVC remote; returns how many files
    were uploaded (DVC's `repo.push` count: 0 when the remote has them all already). Only
    committed (cached) outputs exist to push, so nothing half-written can leave the machine."""
    with dvc_repo(root) as repo:
        return repo.push(targets=targets or None, with_deps=True, remote=_remote(repo))
