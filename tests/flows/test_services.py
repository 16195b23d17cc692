"""`loom services`: real Prefect and MLflow servers and Prefect workers on loopback (free
ports, state in tmp_path), started, health-checked, re-started idempotently and stopped with
no process left behind. The tests on `stack` are the steps of one lifecycle, in file order."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from flows import services

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# `loom services ...` through the parser `register_services` builds, in its own process as a
# user runs it.
LOOM = (
    "import sys, argparse; from flows import cli; "
    "p = argparse.ArgumentParser(prog='loom'); "
    "s = p.add_subparsers(dest='command', required=True); cli.register_services(s); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)
# Deployed to pool gpu: reports the environment its worker gave it, then runs until stopped.
REPORT_ENV_FLOW = """
import json, os, time
from prefect import flow

@flow
def report_env(out: str) -> None:
    keys = ("CUDA_VISIBLE_DEVICES", "MLFLOW_TRACKING_URI", "PREFECT_API_URL")
    with open(out + ".tmp", "w") as fh:
        json.dump({k: os.environ.get(k) for k in keys}, fh)
    os.replace(out + ".tmp", out)
    time.sleep(600)
"""


def loom_services(*args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", LOOM, "services", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def leftovers(state_dir: Path) -> list[psutil.Process]:
    """Live processes started for `state_dir`: each carries it in its environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            marker = proc.environ().get(services.MARKER_ENV)
            if marker == str(state_dir.resolve()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def wait_gone(procs: list[psutil.Process], timeout: float = 15.0) -> list[psutil.Process]:
    """Those of `procs` still alive (or unreaped) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running()]
        time.sleep(0.2)
    return alive


def teardown(state_dir: Path) -> None:
    """Always leave nothing behind, whatever a test did: down, then kill what still runs."""
    try:
        services.down(state_dir, grace=5)
    finally:
        for proc in leftovers(state_dir):
            proc.kill()


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status == 200


@dataclass
class Stack:
    state: Path
    prefect_port: int
    mlflow_port: int
    up: subprocess.CompletedProcess
    squatter: subprocess.Popen  # a live program a stale record claimed was the Prefect server

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"


def pids(state_dir: Path) -> dict[str, int]:
    return {r.name: r.pid for r in services.status(state_dir)}


def write_records(state_dir: Path, records: list[dict]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    data = {"format": services.FORMAT, "services": records}
    (state_dir / "services.json").write_text(json.dumps(data))
    for rec in records:
        (state_dir / f"{rec['name']}.pid").write_text(str(rec["pid"]))


def record(name: str, pid: int, create_time: float, cmd: list[str]) -> dict:
    return {
        "name": name,
        "pid": pid,
        "create_time": create_time,
        "url": f"http://127.0.0.1:{free_ports(1)[0]}",
        "cmd": cmd,
        "log": "/dev/null",
        "started_at": "2026-01-01T00:00:00+00:00",
        "pool": None,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Servers started once for the module, through the CLI, over a stale record."""
    state = tmp_path_factory.mktemp("services") / "state"
    squatter = subprocess.Popen(["sleep", "300"])
    stale = psutil.Process(squatter.pid)
    write_records(state, [record("prefect", stale.pid, stale.create_time() - 50, stale.cmdline())])
    prefect_port, mlflow_port = free_ports(2)
    try:
        started = time.monotonic()
        res = loom_services(
            "up", "--state-dir", state, "--prefect-port", prefect_port, "--mlflow-port", mlflow_port
        )
        print(f"loom services up: {time.monotonic() - started:.1f} s")
        assert res.returncode == 0, res.stderr
        yield Stack(state, prefect_port, mlflow_port, res, squatter)
    finally:
        teardown(state)
        squatter.kill()
        squatter.wait()


def test_up_starts_healthy_servers_pools_and_records(stack):
    assert stack.up.stdout.splitlines() == [
        f"export PREFECT_API_URL={stack.api}",
        f"export MLFLOW_TRACKING_URI={stack.mlflow}",
    ]
    assert services.service_env(stack.state) == {
        "PREFECT_API_URL": stack.api,
        "MLFLOW_TRACKING_URI": stack.mlflow,
    }
    assert http_ok(f"{stack.api}/health") and http_ok(f"{stack.mlflow}/health")
    rows = services.status(stack.state)
    assert [(r.name, r.state) for r in rows] == [("prefect", "running"), ("mlflow", "running")]
    res = loom_services("status", "--state-dir", stack.state)
    assert res.returncode == 0 and res.stdout.count(" running ") == 2, res.stdout + res.stderr

    # The stale record's pid belongs to another program: replaced, never signalled.
    assert stack.squatter.poll() is None and pids(stack.state)["prefect"] != stack.squatter.pid

    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=stack.api) as client:
        assert [client.read_work_pool(n).type for n in ("cpu", "gpu")] == ["process", "process"]

    for name, pid in pids(stack.state).items():
        assert (stack.state / f"{name}.pid").read_text().strip() == str(pid)
        assert (stack.state / "logs" / f"{name}.log").stat().st_size > 0
        proc = psutil.Process(pid)
        listening = {
            c.laddr
            for p in (proc, *proc.children(recursive=True))
            for c in p.net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, name
    assert (stack.state / "prefect" / "prefect.db").is_file()
    assert (stack.state / "mlflow.db").is_file()


def test_mlflow_server_keeps_runs_and_artifacts_in_the_state_dir(stack, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow)
    run = client.create_run(client.create_experiment("services-test"))
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.log_metric(run.info.run_id, "loss", 0.5)
    [stored] = (stack.state / "mlflow-artifacts").rglob("note.txt")
    assert stored.read_text() == "hello"
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}


def test_up_again_starts_no_duplicates(stack):
    before, procs = pids(stack.state), len(leftovers(stack.state))
    result = services.up(
        stack.state, prefect_port=stack.prefect_port, mlflow_port=stack.mlflow_port
    )
    assert result["started"] == [] and result["already_running"] == ["prefect", "mlflow"]
    assert pids(stack.state) == before and len(leftovers(stack.state)) == procs


def test_workers_added_later_poll_their_pools_with_their_own_env(stack):
    servers = pids(stack.state)
    result = services.up(
        stack.state,
        prefect_port=stack.prefect_port,
        mlflow_port=stack.mlflow_port,
        workers=["cpu"],
        gpu_slots=1,
    )
    assert result["started"] == ["worker-cpu", "worker-gpu-0"]
    now = pids(stack.state)
    assert {k: now[k] for k in servers} == servers
    assert all(r.state == "running" for r in services.status(stack.state))

    env = {name: psutil.Process(now[name]).environ() for name in ("worker-cpu", "worker-gpu-0")}
    for e in env.values():
        assert e["PREFECT_API_URL"] == stack.api and e["MLFLOW_TRACKING_URI"] == stack.mlflow
        assert e["PREFECT_HOME"] == str(stack.state.resolve() / "prefect")
    assert env["worker-gpu-0"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["worker-cpu"]["CUDA_VISIBLE_DEVICES"] == ""
    assert psutil.Process(now["worker-gpu-0"]).cmdline()[-2:] == ["--limit", "1"]

    from prefect.client.orchestration import SyncPrefectClient

    flow_dir = stack.state.parent / "flow"
    flow_dir.mkdir()
    (flow_dir / "report_env.py").write_text(REPORT_ENV_FLOW)
    out = flow_dir / "env.json"
    with SyncPrefectClient(api=stack.api) as client:
        for pool, name in (("cpu", "loom-worker-cpu"), ("gpu", "loom-worker-gpu-0")):
            workers = {w.name: w.status.value for w in client.read_workers_for_work_pool(pool)}
            assert workers == {name: "ONLINE"}
        deployment = client.create_deployment(
            client.create_flow_from_name("report-env"),
            "on-gpu",
            work_pool_name="gpu",
            entrypoint="report_env.py:report_env",
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(flow_dir)}}
            ],
        )
        client.create_flow_run_from_deployment(deployment, parameters={"out": str(out)})
    deadline = time.monotonic() + 90  # the worker polls every 10 s, the run imports Prefect
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert json.loads(out.read_text()) == {
        "CUDA_VISIBLE_DEVICES": "0",
        "MLFLOW_TRACKING_URI": stack.mlflow,
        "PREFECT_API_URL": stack.api,
    }


def test_down_stops_every_process_and_frees_the_ports(stack):
    procs = leftovers(stack.state)
    # 2 servers (+ MLflow's uvicorn), 2 workers, and the flow run still in flight on pool gpu
    assert len(procs) >= 6 and any("prefect.engine" in p.cmdline() for p in procs)
    started = time.monotonic()
    stopped = services.down(stack.state)
    print(f"down: {time.monotonic() - started:.1f} s")
    assert stopped == ["prefect", "mlflow", "worker-cpu", "worker-gpu-0"]
    assert wait_gone(procs) == [] and leftovers(stack.state) == []
    assert port_free(stack.prefect_port) and port_free(stack.mlflow_port)
    assert services.status(stack.state) == [] and not list(stack.state.glob("*.pid"))
    assert services.service_env(stack.state) == {}

    res = loom_services("down", "--state-dir", stack.state)
    assert res.returncode == 0 and "nothing was running" in res.stderr
    assert loom_services("status", "--state-dir", stack.state).returncode == 3


@pytest.fixture
def state_dir(tmp_path):
    state = tmp_path / "state"
    yield state
    teardown(state)


def test_taken_port_fails_with_the_port_and_starts_nothing(state_dir):
    prefect_port = free_ports(1)[0]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        mlflow_port = squatter.getsockname()[1]
        ports = [f"--prefect-port={prefect_port}", f"--mlflow-port={mlflow_port}"]
        res = loom_services("up", "--state-dir", state_dir, *ports)
    assert res.returncode == 1
    assert f"error: mlflow: port {mlflow_port} on 127.0.0.1 is already in use" in res.stderr
    assert "--mlflow-port" in res.stderr and res.stdout == ""
    assert leftovers(state_dir) == [] and services.status(state_dir) == []


def test_service_dying_at_start_is_reported_and_the_rest_stopped(state_dir):
    state_dir.mkdir()
    (state_dir / "mlflow.db").write_text("this is not an SQLite database")
    prefect_port, mlflow_port = free_ports(2)
    with pytest.raises(services.ServicesError) as err:
        services.up(state_dir, prefect_port=prefect_port, mlflow_port=mlflow_port)
    message = str(err.value)
    assert message.startswith(f"mlflow (http://127.0.0.1:{mlflow_port}, port {mlflow_port})")
    assert "exited while starting" in message and "file is not a database" in message
    assert (state_dir / "logs" / "prefect.log").is_file()  # it was started, and stopped again
    assert leftovers(state_dir) == [] and services.status(state_dir) == []
    assert port_free(prefect_port)


def test_stale_records_are_reported_stopped_and_never_signalled(state_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = subprocess.Popen(["sleep", "300"])
    try:
        proc = psutil.Process(other.pid)
        write_records(
            state_dir,
            [
                record("prefect", dead.pid, time.time(), [sys.executable, "-c", "pass"]),
                # pid reused by another program: other start time, or other command line
                record("mlflow", proc.pid, proc.create_time() - 50, proc.cmdline()),
                record("worker-cpu", proc.pid, proc.create_time(), ["prefect", "worker"]),
            ],
        )
        rows = services.status(state_dir)
        assert [(r.name, r.state) for r in rows] == [
            ("prefect", "stopped"),
            ("mlflow", "stopped"),
            ("worker-cpu", "stopped"),
        ]
        assert services.service_env(state_dir) == {}
        res = loom_services("status", "--state-dir", state_dir)
        assert res.returncode == 3 and res.stdout.count(" stopped ") == 3
        assert services.down(state_dir) == []
        assert other.poll() is None
        assert services.status(state_dir) == [] and not list(state_dir.glob("*.pid"))
    finally:
        other.kill()
        other.wait()
