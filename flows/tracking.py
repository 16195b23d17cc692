"""MLflow tracking for stage runs: where the store is, what a run records, lineage tags.

Default store: SQLite under `<project>/mlflow/` (artifacts beside it); `MLFLOW_TRACKING_URI`
selects a server. A server that does not answer fails the stage before any work.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

EXPERIMENT_ENV = "LOOM_EXPERIMENT"
DEFAULT_EXPERIMENT = "loom"
PARENT_RUN_ENV = "LOOM_MLFLOW_PARENT_RUN_ID"
FLOW_RUN_ENV = "LOOM_PREFECT_FLOW_RUN_ID"
EXTRA_TAGS_ENV = "LOOM_RUN_TAGS"  # JSON object of extra tags for every run (e.g. a sweep id)
# Never logged as params, whatever section they appear in.
_SECRET_KEY = re.compile(
    r"(^|[._])(secret|password|passwd|api_?key|access_?key|auth_?token|credentials?)($|[._])", re.I
)


class TrackingError(RuntimeError):
    """The tracking server is unreachable or refused a request."""


def tracking_uri(root: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(root) / 'mlflow' / 'mlflow.db').resolve()}"


def artifact_root(root: Path) -> str:
    return (Path(root) / "mlflow" / "artifacts").resolve().as_uri()


def probe(url: str, timeout: float = 5.0) -> str | None:
    """None if GET `url` answers 200, else what went wrong (for an error message)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http only)
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any work, when an HTTP tracking server does not answer /health."""
    if not uri.startswith(("http://", "https://")):
        return
    problem = probe(uri.rstrip("/") + "/health", timeout)
    if problem is None:
        return
    raise TrackingError(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start it "
        f"(`mlflow server --host 127.0.0.1 --port 5000`) or unset MLFLOW_TRACKING_URI to use "
        f"the embedded SQLite store under mlflow/."
    )


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT


def setup(root: Path) -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id."""
    import mlflow

    uri = tracking_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    name = experiment_name()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root(root) if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by a sibling stage
        return client.get_experiment_by_name(name).experiment_id


def git_info(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            res = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return res.stdout.strip() if res.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def host_info() -> dict[str, str]:
    device = "cpu"
    torch = sys.modules.get("torch")  # only if the component used torch; never import it here
    if torch is not None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.get_device_name()}"
    info = {"host": socket.gethostname(), "python": platform.python_version(), "device": device}
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        info["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return info


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"}; secrets dropped; lists as JSON."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            full = f"{prefix}.{key}" if prefix else str(key)
            if _SECRET_KEY.search(full):
                continue
            out.update(flatten(value, full))
    else:
        out[prefix] = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
    return out


def log_curves(client: Any, run_id: str, curves: dict[str, list[tuple[int, float]]]) -> None:
    """Step-wise series as metric history, in batches (one request per 1000 points)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, int(s)) for k, series in curves.items() for s, v in series]
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i : i + 1000])


# What SQLite, PostgreSQL and MySQL say when an insert loses a race on a unique key.
_UNIQUE_CONFLICT = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def log_input(dataset: Any, context: str, tags: dict[str, str], attempts: int = 5) -> None:
    """`mlflow.log_input` that survives a concurrent run logging the same dataset.

    MLflow looks a dataset (name, digest) up in the experiment and inserts it when missing;
    two runs doing that at once (sweep points, parallel stages) both miss it and the later
    insert fails on the unique key. The whole insert is rolled back, so retrying is safe and
    finds the row the other run wrote.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            return
        except MlflowException as err:
            if attempt == attempts - 1 or not any(m in str(err) for m in _UNIQUE_CONFLICT):
                raise
            time.sleep(0.05 * (attempt + 1))


def extra_tags() -> dict[str, str]:
    """Tags the launcher asked every stage run to carry ($LOOM_RUN_TAGS, a JSON object)."""
    raw = os.environ.get(EXTRA_TAGS_ENV, "")
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        raise TrackingError(f"${EXTRA_TAGS_ENV} is not a JSON object: {raw!r}") from None
    if not isinstance(data, dict):
        raise TrackingError(f"${EXTRA_TAGS_ENV} is not a JSON object: {raw!r}")
    return {str(k): str(v) for k, v in data.items()}
