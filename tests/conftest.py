"""Shared fixtures: one real Prefect server and one real MLflow SQLite store per test session,
and throwaway copies of this project (git + DVC) sized down to run in seconds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
_STATE = Path(tempfile.mkdtemp(prefix="loom-tests-"))
# Before anything imports prefect or mlflow: their homes and stores live in temp dirs.
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE / 'mlflow.db'}"
os.environ["DVC_NO_ANALYTICS"] = "1"
# The test server's telemetry service would log "Failed to send telemetry" (no network).
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
# `dvc repro` runs `loom stage ...`: find this environment's `loom`.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])

# Small enough for seconds per stage, big enough that every stage does real work.
TINY_PARAMS = {
    "stdlib_text": {"max_docs": 150},
    "corpus": {"val_fraction": 0.1},
    "bpe": {"small": {"vocab_size": 300}, "large": {"vocab_size": 420}},
    "word2vec": {"dim": 16, "epochs": 2, "min_count": 2},
    "runtime": {"word2vec": {"progress": False}},
    "embedding_eval": {"restrict_vocab": 2000, "plot_words": 40},
}
ALL_STAGES = [
    "stdlib_text",
    "corpus",
    "bpe@small",
    "bpe@large",
    "tokenize@small",
    "tokenize@large",
    "word2vec@small",
    "word2vec@large",
    "embedding_eval@small",
    "embedding_eval@large",
]  # in dvc.yaml (topological) order
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "params.gpu.yaml",
    "prefect.yaml",
    ".dvcignore",
    "components",
    "flows",
)


def merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def git(root: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=loom-tests", "-c", "user.email=tests@loom.invalid", *args]
    return subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True).stdout


class _IndentedDumper(yaml.SafeDumper):
    """Lists indented under their key, as dvc.yaml is written (tests edit it as text)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def component_of(stage: dict) -> str:
    """meta.component of a dvc.yaml stage entry (plain or foreach/matrix)."""
    body = stage.get("do", stage)
    return str((body.get("meta") or {}).get("component", ""))


def _prefixes(stage: dict, field: str) -> tuple[str, ...]:
    """The paths of a stage entry's `deps` or `outs` up to their first ${...} template."""
    entries = stage.get("do", stage).get(field, [])
    paths = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return tuple(
        str(path).split("${")[0] for path in paths if not str(path).startswith("components/")
    )


def keep_pipelines(root: Path, pipelines: tuple[str, ...]) -> None:
    """Cut the copy at `root` down to the stages of `pipelines` (the component family before
    the first dot: "text", "vision"), and prefect.yaml to the deployments named after them
    ("text-nightly"): the orchestration tests exercise the spine on the text pipeline in
    seconds, the vision pipeline has its own tests."""
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    stages = dvc_yaml["stages"]
    dropped = [n for n, st in stages.items() if component_of(st).split(".")[0] not in pipelines]
    # and, transitively, the stages that read a dropped stage's outputs (the vision pipeline's
    # diffusion models read the text pipeline's tokenizer): they could not run without them
    while True:
        gone = tuple(prefix for n in dropped for prefix in _prefixes(stages[n], "outs"))
        more = [
            n for n, st in stages.items()
            if n not in dropped and any(d.startswith(gone) for d in _prefixes(st, "deps"))
        ]  # fmt: skip
        if not more:
            break
        dropped += more
    dvc_yaml["stages"] = {n: st for n, st in stages.items() if n not in dropped}

    gone = tuple(prefix for n in dropped for prefix in _prefixes(stages[n], "outs"))

    def of_dropped(path: str) -> bool:  # plots/autoencoder_kl.json, data/autoencoders/...
        named = any(part.startswith(n) for part in Path(path).parts for n in dropped)
        return named or path.startswith(gone)

    def files(plot: str | dict) -> list[str]:
        return [plot] if isinstance(plot, str) else list(next(iter(plot.values()))["y"])

    dvc_yaml["plots"] = [p for p in dvc_yaml.get("plots", []) if not any(map(of_dropped, files(p)))]
    text = yaml.dump(dvc_yaml, Dumper=_IndentedDumper, sort_keys=False, width=100)
    (root / "dvc.yaml").write_text(text)
    # prefect.yaml as text (tests append deployments to it that use its `&env` anchor): drop
    # each "  - name: <pipeline>-..." block of another pipeline, up to the next one.
    text = (root / "prefect.yaml").read_text()
    blocks = re.split(r"(?m)^(?=  - name: )", text)
    kept = [b for b in blocks if not b.startswith("  - name: ") or _pipeline_of(b) in pipelines]
    (root / "prefect.yaml").write_text("".join(kept).rstrip("\n") + "\n")


def _pipeline_of(block: str) -> str:
    """ "text" for a deployment block starting "  - name: text-nightly"."""
    return block.split(":", 1)[1].strip().split("-")[0]


def make_project(
    dst: Path, params: dict | None = None, pipelines: tuple[str, ...] = ("text",)
) -> Path:
    """A git + DVC copy of this project's `pipelines` (stages by component family) with
    TINY_PARAMS (and `params`) applied."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst / name)
    keep_pipelines(dst, pipelines)
    data = merge(
        yaml.safe_load((dst / "params.yaml").read_text()), merge(dict(TINY_PARAMS), params or {})
    )
    (dst / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    git(dst, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dst, check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dvc",
            "remote",
            "add",
            "-d",
            "local",
            str(dst.parent / f"{dst.name}-remote"),
        ],
        cwd=dst,
        check=True,
        capture_output=True,
    )
    git(dst, "add", "-A")
    git(dst, "commit", "-qm", "test project")
    return dst


def reproduced_pipeline(
    tmp_path_factory, pipeline: str, params: dict, also: tuple[str, ...] = ()
) -> tuple[Path, dict]:
    """A copy of `pipeline` (and the pipelines `also` it reads from; TINY_PARAMS + `params`)
    on which `dvc repro` ran, in an MLflow experiment of its own: (root, {run name: its MLflow
    run})."""
    import mlflow

    from flows import tracking

    name = f"test-{pipeline}-{os.getpid()}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(tracking.EXPERIMENT_ENV, name)
        root = make_project(tmp_path_factory.mktemp(pipeline) / "proj", params, (*also, pipeline))
        res = dvc(root, "repro", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    return root, runs


def flow_run_logs(flow_run_id: str) -> list:
    """Every log of the flow run, oldest first, through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs: list = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                offset=len(logs),
            )
            logs += page
            if len(page) < 200:
                return logs


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, check=check, capture_output=True, text=True
    )


def loom(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`loom ...` as a user types it, in a subprocess."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "loom"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> Path:
    """A project on which `dvc repro` has run once (copy it, never modify it)."""
    root = make_project(tmp_path_factory.mktemp("built") / "proj")
    res = dvc(root, "repro", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return root


@pytest.fixture
def project(built_project, tmp_path) -> Path:
    """A private copy of the built project."""
    dst = tmp_path / "proj"
    shutil.copytree(built_project, dst, symlinks=True)
    return dst


@pytest.fixture
def experiment(monkeypatch, request) -> str:
    """A fresh MLflow experiment name per test (the session store is shared)."""
    name = f"test-{request.node.name}-{os.getpid()}"[:200]
    monkeypatch.setenv("LOOM_EXPERIMENT", name)
    return name
