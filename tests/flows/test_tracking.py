"""MLflow tracking glue against the session's real SQLite store."""

from __future__ import annotations

import base64
import http.server
import os
import socket
import subprocess
import threading

import mlflow
import pytest
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from flows import tracking
from tests.conftest import REPO


def test_concurrent_runs_log_the_same_dataset(experiment, tmp_path):
    """Runs that log one dataset at the same moment (sweep points share an experiment) each
    records it. Plain `mlflow.log_input` loses this race
    (unique-key error on the dataset insert) in about a third of the rounds."""
    (tmp_path / "corpus.txt").write_text("data")
    source = resolve_dataset_source(str(tmp_path / "corpus.txt"))
    client = mlflow.MlflowClient()
    exp_id = client.create_experiment(experiment)
    threads, rounds = 4, 8
    errors: list[BaseException] = []
    logged: list[tuple[str, str]] = []  # (run id, dataset name)
    barrier = threading.Barrier(threads)

    def worker() -> None:
        for r in range(rounds):
            with mlflow.start_run(experiment_id=exp_id) as run:  # runs are thread-local
                dataset = MetaDataset(source=source, name=f"corpus-{r}", digest=f"md5-{r}")
                logged.append((run.info.run_id, dataset.name))
                barrier.wait()
                try:
                    tracking.log_input(dataset, "input", {"path": "corpus.txt"})
                except BaseException as err:
                    errors.append(err)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    assert errors == []
    assert len(logged) == threads * rounds
    for run_id, name in logged:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [i.dataset.name for i in inputs] == [name]
        assert {t.key: t.value for t in inputs[0].tags}["path"] == "corpus.txt"


USER, PASSWORD = "loom", "s3cr:t@pw"  # ':' and '@' percent-encoded in the URL


@pytest.fixture
def auth_server():
    """http://127.0.0.1:PORT answering /health 200 only with USER:PASSWORD as Basic auth."""
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/health" and self.headers.get("Authorization") == expected
            self.send_response(200 if ok else 401)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://user:pa55@host:5000/mlflow", "http://user:***@host:5000/mlflow"),
        ("https://TOKEN@host", "https://***@host"),
        ("https://u:p@ss@host/x?y=1", "https://u:***@host/x?y=1"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://host/a@b", "http://host/a@b"),
    ],
)
def test_redact(uri, shown):
    assert tracking.redact(uri) == shown


def test_health_check_sends_url_credentials_as_basic_auth(auth_server):
    tracking.check_reachable(f"http://{USER}:s3cr%3At%40pw@127.0.0.1:{auth_server}")
    assert tracking.probe(f"http://127.0.0.1:{auth_server}/health") == "HTTP 401 Unauthorized"
    with pytest.raises(tracking.TrackingError) as info:
        tracking.check_reachable(f"http://{USER}:wrong-pw@127.0.0.1:{auth_server}/")
    assert "HTTP 401" in str(info.value) and "wrong-pw" not in str(info.value)


def test_unreachable_server_error_hides_the_password():
    port = closed_port()
    with pytest.raises(tracking.TrackingError) as info:
        tracking.check_reachable(f"http://{USER}:hunter2@127.0.0.1:{port}", timeout=2)
    message = str(info.value)
    assert f"http://{USER}:***@127.0.0.1:{port}" in message and "hunter2" not in message
    with pytest.raises(tracking.TrackingError) as info:
        tracking.check_reachable(f"http://tok3n@127.0.0.1:{port}", timeout=2)
    assert "tok3n" not in str(info.value)


def test_ui_command_hides_the_password():
    from flows import cli

    assert cli.ui_command(REPO, "http://u:hunter2@host:5000") == "open http://u:***@host:5000"


def test_wall_clock_metrics_are_named_so():
    wall_clock = ["seconds", "stage_seconds", "train_units_per_second"]
    assert all(tracking.is_wall_clock(m) for m in wall_clock)
    assert not any(tracking.is_wall_clock(m) for m in ["loss", "seconds_left", "per_second"])


def test_lineage_tags_name_the_commit_the_host_and_this_process(tmp_path):
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    tags = tracking.lineage_tags(REPO, "flow-1")
    assert tags[tracking.GIT_COMMIT_TAG] == head
    assert tags[tracking.GIT_DIRTY_TAG] in ("true", "false")
    assert tags[tracking.HOST_TAG] == socket.gethostname()
    assert tags[tracking.PID_TAG] == str(os.getpid())
    assert tags[tracking.FLOW_RUN_TAG] == "flow-1"
    assert tracking.FLOW_RUN_TAG not in tracking.lineage_tags(REPO, None)
    outside = tracking.lineage_tags(tmp_path, None)  # not a git repository
    assert outside[tracking.GIT_COMMIT_TAG] == "unknown"
