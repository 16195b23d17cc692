"""MLflow tracking for stage runs: where the store is, what a run records, lineage tags.

Default store: SQLite under `<project>/mlflow/` (artifacts beside it); `MLFLOW_TRACKING_URI`
selects a server. A server that does not answer fails the stage before any work. The names
of the tags Loom writes and reads, and the rule that keeps wall-clock metrics out of
versioned files and summaries, live here and nowhere else.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flows import git, project
from flows.params import parse_yaml

if TYPE_CHECKING:
    from mlflow.entities import Experiment

EXPERIMENT_ENV = "LOOM_EXPERIMENT"
DEFAULT_EXPERIMENT = "loom"
PARENT_RUN_ENV = "LOOM_MLFLOW_PARENT_RUN_ID"
FLOW_RUN_ENV = "LOOM_PREFECT_FLOW_RUN_ID"
EXTRA_TAGS_ENV = "LOOM_RUN_TAGS"  # JSON object of extra tags for every run (e.g. a sweep id)

# MLflow tags. A stage run carries STAGE_TAG; a flow's pipeline (parent) run PIPELINE_TAG.
STAGE_TAG = "loom.stage"  # the dvc.yaml stage name, e.g. "bpe@small"
PIPELINE_TAG = "loom.pipeline"  # "true"
COMPONENT_TAG = "loom.component"  # registry name
COMPONENT_VERSION_TAG = "loom.component_version"
CMD_TAG = "loom.cmd"
KEY_METRICS_TAG = "loom.key_metrics"  # JSON list: the few metrics summaries show for the stage
ERROR_TAG = "loom.error"  # why a run failed or was killed
RESUMED_FROM_TAG = "loom.resumed_from"  # the killed run whose checkpoints this one resumed
DVC_PUSHED_TAG = "loom.dvc_pushed"  # pipeline runs asked to push: "true" once all was pushed
DEP_TAG_PREFIX, OUT_TAG_PREFIX = "dvc.dep.", "dvc.out."  # + a path: its DVC md5
# Lineage (`lineage_tags`): the code, the machine, the process, the Prefect flow run.
GIT_COMMIT_TAG, GIT_DIRTY_TAG = "loom.git.commit", "loom.git.dirty"
HOST_TAG, PYTHON_TAG, DEVICE_TAG = "loom.host", "loom.python", "loom.device"
CUDA_DEVICES_TAG = "loom.cuda_visible_devices"
PID_TAG = "loom.pid"
NPROC_TAG = "loom.nproc"  # a stage launched on several processes (torchrun): how many
FLOW_RUN_TAG = "prefect.flow_run_id"
# MLflow's own source tags (its UI's "Source", "User" and git columns).
SOURCE_NAME_TAG, SOURCE_TYPE_TAG = "mlflow.source.name", "mlflow.source.type"
SOURCE_COMMIT_TAG, SOURCE_REPO_TAG = "mlflow.source.git.commit", "mlflow.source.git.repoURL"
USER_TAG = "mlflow.user"
# A `dvc exp run` experiment's runs (its parent run and its stages): the name DVC gave it and
# the commit it branches from (`DVC_EXP_NAME`, `DVC_EXP_BASELINE_REV` in a stage's env).
DVC_EXP_TAG, DVC_EXP_BASELINE_TAG = "dvc.exp_name", "dvc.exp_baseline_rev"
# Upstream lineage of a stage run: params `upstream.<stage group>.<key>` say what every
# upstream output was made with; the tag lists those upstream stages (JSON).
UPSTREAM_PARAM_PREFIX, UPSTREAM_TAG = "upstream.", "loom.upstream"
# A sweep point's runs (pipeline and stages): the sweep, the point's index, the point as JSON.
SWEEP_ID_TAG = "loom.sweep_id"
SWEEP_INDEX_TAG = "loom.sweep_index"
SWEEP_POINT_TAG = "loom.sweep_point"

# Never logged as params, whatever section they appear in.
_SECRET_KEY = re.compile(
    r"(^|[._])(secret|password|passwd|api_?key|access_?key|auth_?token|credentials?)($|[._])", re.I
)


class TrackingError(RuntimeError):
    """The tracking server is unreachable or refused a request."""


def tracking_uri(root: Path) -> str:
    """$MLFLOW_TRACKING_URI, else the embedded SQLite store under the workspace's `mlflow/`
    (the parent workspace's for a DVC experiment run in a temporary copy: its runs must
    outlive the copy)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = project.workspace_root(root) / "mlflow" / "mlflow.db"
    return f"sqlite:///{store.resolve()}"


def artifact_root(root: Path) -> str:
    return (project.workspace_root(root) / "mlflow" / "artifacts").resolve().as_uri()


# `scheme://userinfo@`: the netloc runs to the first / ? #, userinfo to its last @ (as urlsplit).
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")


def redact(uri: str) -> str:
    """`uri` fit to show: a password, or a token given alone as userinfo, becomes `***`.

    "http://user:pass@host:5000/x" -> "http://user:***@host:5000/x";
    "https://TOKEN@host" -> "https://***@host"; URIs without userinfo are returned unchanged.
    """
    match = _USERINFO.match(uri)
    if match is None:
        return uri
    user, sep, _ = match["userinfo"].partition(":")
    shown = f"{user}:***" if sep else "***"
    return f"{match['scheme']}{shown}@{uri[match.end() :]}"


def _split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """(`url` without userinfo, its HTTP Basic `Authorization` header or {}).

    urllib cannot open a URL with userinfo ("nonnumeric port"); MLflow's client (requests)
    sends it as Basic auth, a token alone as the user name with an empty password.
    """
    match = _USERINFO.match(url)
    if match is None:
        return url, {}
    user, _, password = match["userinfo"].partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    header = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return match["scheme"] + url[match.end() :], {"Authorization": header}


def probe(url: str, timeout: float = 5.0) -> str | None:
    """None if GET `url` answers 200, else what went wrong (for an error message)."""
    bare, headers = _split_userinfo(url)
    request = urllib.request.Request(bare, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (http only)
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:  # 4xx/5xx, e.g. 401 for missing or wrong credentials
        return f"HTTP {err.code} {err.reason}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
    except ValueError as err:  # http.client.InvalidURL: a malformed host or port
        return str(err)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any work, when an HTTP tracking server does not answer /health."""
    if not uri.startswith(("http://", "https://")):
        return
    problem = probe(uri.rstrip("/") + "/health", timeout)
    if problem is None:
        return
    raise TrackingError(
        f"MLflow tracking server {redact(uri)} is unreachable ({problem}). Start it "
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
    try:
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(name)
    except Exception as err:
        if not uri.startswith("sqlite:"):
            raise
        # A damaged SQLite file surfaces as SQLAlchemy/MLflow errors that never name it.
        db = uri.removeprefix("sqlite:///")
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        raise TrackingError(
            f"{db}: the MLflow store cannot be read ({reason}); move the file aside to start "
            "a new store, or point MLFLOW_TRACKING_URI at another one"
        ) from None
    if exp is not None:
        return exp.experiment_id
    location = artifact_root(root) if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by a sibling stage: it exists now
        return cast("Experiment", client.get_experiment_by_name(name)).experiment_id


def lineage_tags(root: Path, flow_run_id: str | None, source: str = "loom run") -> dict[str, str]:
    """The tags every run Loom starts carries, stage run or pipeline run: the git commit of
    `root` and its dirty flag (Loom's and MLflow's own source tags: `source` is the command,
    e.g. "loom stage bpe@small"), the user, host, Python and device, this process (a later
    `end_stale_runs` ends the run when that process is gone) and, unless `flow_run_id` is
    None, the Prefect flow run."""
    code = git.checkout(root)
    tags = {
        GIT_COMMIT_TAG: code.commit,
        GIT_DIRTY_TAG: str(code.dirty).lower(),
        SOURCE_NAME_TAG: source,
        SOURCE_TYPE_TAG: "LOCAL",
        SOURCE_COMMIT_TAG: code.commit,
        USER_TAG: _user(),
        HOST_TAG: socket.gethostname(),
        PYTHON_TAG: platform.python_version(),
        DEVICE_TAG: _device(),
    }
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        tags[CUDA_DEVICES_TAG] = os.environ["CUDA_VISIBLE_DEVICES"]
    tags[PID_TAG] = str(os.getpid())
    if flow_run_id is not None:
        tags[FLOW_RUN_TAG] = flow_run_id
    return tags


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (a container)
        return "unknown"


def dvc_experiment() -> str | None:
    """The name of the `dvc exp run` experiment this process runs a stage of, or None."""
    return os.environ.get("DVC_EXP_NAME") or None


def dvc_experiment_tags() -> dict[str, str]:
    name = dvc_experiment()
    if name is None:
        return {}
    tags = {DVC_EXP_TAG: name}
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags[DVC_EXP_BASELINE_TAG] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


PARAMS_PREFIX = "params"  # a pipeline run's param for params.yaml key a.b is params.a.b
_MLFLOW_PARAM_CHARS = 6000  # MLflow's MAX_PARAM_VAL_LENGTH
_MLFLOW_PARAMS_PER_BATCH = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH


def _without_secrets(data: Any, prefix: str = "") -> Any:
    """`data` less the keys `flatten` drops as secrets (the same rule, asked of it)."""
    if not isinstance(data, dict):
        return data
    kept = {}
    for key, value in data.items():
        if flatten({key: 0}, prefix):  # {} when prefix.key names a secret
            kept[key] = _without_secrets(value, f"{prefix}.{key}" if prefix else str(key))
    return kept


def log_params_file(client: Any, run_id: str, root: Path) -> None:
    """params.yaml of `root` as the stages run with it (overlays and -S overrides applied
    before the first stage starts) on a pipeline run: each value as param `params.<dotted
    key>` (secrets dropped, as on stage runs), the file as artifact `params.yaml` (as it is;
    rewritten without its secret-looking keys when it has any)."""
    import yaml
    from mlflow.entities import Param

    path = Path(root) / "params.yaml"
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    data = parse_yaml(text) or {}
    flat = flatten(data, PARAMS_PREFIX)
    entries = [Param(k, v[:_MLFLOW_PARAM_CHARS]) for k, v in flat.items()]
    for i in range(0, len(entries), _MLFLOW_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=entries[i : i + _MLFLOW_PARAMS_PER_BATCH])
    public = _without_secrets(data)
    if public != data:
        text = "# params.yaml, less its secret-looking keys (not logged)\n" + yaml.safe_dump(
            public, sort_keys=False
        )
    client.log_text(run_id, text, "params.yaml")


def experiment_parent_run(root: Path, experiment_id: str) -> str:
    """The parent run of this `dvc exp run` experiment (DVC runs its stages one process each,
    in order): found by the experiment's name and baseline, or made by the first stage, with
    the experiment's params.yaml. It is RUNNING while one of its stages runs."""
    import mlflow

    client = mlflow.MlflowClient()
    tags = dvc_experiment_tags()
    query = " and ".join(
        [f"tags.`{PIPELINE_TAG}` = 'true'"]
        + [f"tags.`{k}` = '{v.replace(chr(39), '')}'" for k, v in tags.items()]
    )
    found = client.search_runs([experiment_id], query, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    lineage = lineage_tags(root, None, source=f"dvc exp run ({tags[DVC_EXP_TAG]})")
    lineage.pop(PID_TAG)  # outlives this process: stale-run sweeping must leave it alone
    run = client.create_run(
        experiment_id,
        run_name=f"dvc exp {tags[DVC_EXP_TAG]}",
        tags={PIPELINE_TAG: "true", **lineage, **tags, **extra_tags()},
    )
    log_params_file(client, run.info.run_id, root)
    return run.info.run_id


def end_experiment_parent_run(run_id: str | None, status: str) -> None:
    """After each stage: the experiment's parent run ends as its latest stage did."""
    if run_id is None:
        return
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status)


def _device() -> str:
    torch = sys.modules.get("torch")  # only if the component used torch; never import it here
    if torch is not None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name()}"
    return "cpu"


def is_wall_clock(metric: str) -> bool:
    """Whether `metric` is a wall-clock figure (`seconds`, `*_seconds`, `*_per_second`).

    Those go to MLflow only: they differ between two runs of the same inputs, so they stay
    out of the DVC metrics file (a versioned output: same inputs, same bytes, same dvc.lock)
    and out of the key metrics that summaries show in place of a component's own.
    """
    return metric.endswith(("_seconds", "_per_second")) or metric == "seconds"


@contextlib.contextmanager
def environ(name: str, value: str) -> Iterator[None]:
    """Environment variable `name` set to `value` while the block runs (MLflow reads its
    settings from the environment), then restored."""
    had = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if had is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = had


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


def _process_gone(pid: int, started_ms: int) -> bool:
    """Whether the process that started a run at `started_ms` is no longer alive: no such
    pid, or a pid the kernel has since given to a process started later."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    return created > started_ms / 1000 + 1.0


def end_stale_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process died without ending them (a
    SIGKILL, a power cut). Returns their ids. Runs of other hosts are theirs to sweep."""
    import mlflow

    client = mlflow.MlflowClient()
    host = socket.gethostname().replace("'", "")
    stale = []
    for run in client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    ):
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or not _process_gone(int(pid), run.info.start_time):
            continue
        client.set_tag(
            run.info.run_id,
            ERROR_TAG,
            f"its process (pid {pid} on {host}) died without ending the run; marked KILLED",
        )
        client.set_terminated(run.info.run_id, "KILLED")
        stale.append(run.info.run_id)
    return stale
