"""Local Loom services as real processes: `loom services up | down | status`.

`up` starts a Prefect server, an MLflow tracking server and, on request, Prefect process
workers. Each runs detached in its own session (so `down` can signal its whole process group),
with stdin from /dev/null and its output in its own log. One state dir holds everything:

    services.json       what runs (format 1): name, pid, create_time, url, cmd, log, started_at
    <name>.pid          each service's pid, for other tools
    logs/<name>.log     each service's stdout and stderr
    prefect/            the Prefect server's PREFECT_HOME (its SQLite DB: prefect/prefect.db)
    mlflow.db           the MLflow backend store
    mlflow-artifacts/   artifacts that clients log through the MLflow server
    .lock               held by `up` and `down`, one at a time

A record counts as running only while its pid belongs to a process with the recorded
create_time and cmdline: a pid the kernel has since given to another program is a stale
record and is never signalled. Services get their settings explicitly: a caller's own
PREFECT_API_*/PREFECT_SERVER_*/MLFLOW_TRACKING_* settings are not passed on. Each also carries
LOOM_SERVICES_DIR=<state dir>, which its children inherit; `down` stops those too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from flows import pools as work_pools

FORMAT = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
MARKER_ENV = "LOOM_SERVICES_DIR"
# Caller settings that would point a service at some other server, home or store.
_FOREIGN_ENV = (
    "PREFECT_API_",
    "PREFECT_SERVER_",
    "PREFECT_UI_",
    "PREFECT_HOME",
    "PREFECT_PROFILE",
    "MLFLOW_TRACKING_",
    "MLFLOW_REGISTRY_",
)
# Popen objects of the services this process started, kept so that a long-lived caller (a
# test session) can reap them in `_stop` and Python does not warn that they still run.
_CHILDREN: dict[int, subprocess.Popen] = {}
# Health checks go straight to the services, never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServicesError(RuntimeError):
    """A service did not come up, or the request cannot be met (e.g. a port is taken)."""


@dataclass
class Service:
    """One started process, as recorded in services.json."""

    name: str  # prefect | mlflow | worker-<pool> | worker-gpu-<i>
    pid: int
    create_time: float  # psutil's; tells our process from a later one given the same pid
    url: str  # servers: their base URL; workers: the Prefect API they poll
    cmd: list[str]
    log: str
    started_at: str  # ISO 8601, UTC
    pool: str | None = None  # workers only


@dataclass
class ServiceStatus:
    name: str
    pid: int
    state: Literal["running", "stopped", "unhealthy"]
    url: str
    log: str


@dataclass
class _Spec:
    """A service to start."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    url: str
    port: int | None = None
    pool: str | None = None


def default_state_dir() -> Path:
    """$LOOM_STATE_DIR, else `<project root>/.loom/services` (the working dir outside one)."""
    if os.environ.get("LOOM_STATE_DIR"):
        return Path(os.environ["LOOM_STATE_DIR"])
    from flows.project import ProjectError, find_root

    try:
        root = find_root()
    except ProjectError:
        root = Path.cwd()
    return root / ".loom" / "services"


# --- records -------------------------------------------------------------------------------


def _load(state_dir: Path) -> list[Service]:
    path = state_dir / "services.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ServicesError(f"{path}: not valid JSON ({err}); remove it to start over") from None
    if data.get("format") != FORMAT:
        raise ServicesError(f"{path}: format {data.get('format')!r}, expected {FORMAT}")
    return [Service(**s) for s in data["services"]]


def _save(state_dir: Path, services: Iterable[Service]) -> None:
    """Write services.json and one <name>.pid per service; remove other pid files."""
    services = list(services)
    tmp = state_dir / "services.json.tmp"
    tmp.write_text(
        json.dumps({"format": FORMAT, "services": [asdict(s) for s in services]}, indent=2) + "\n"
    )
    os.replace(tmp, state_dir / "services.json")
    names = {s.name for s in services}
    for pid_file in state_dir.glob("*.pid"):
        if pid_file.stem not in names:
            pid_file.unlink()
    for svc in services:
        (state_dir / f"{svc.name}.pid").write_text(f"{svc.pid}\n")


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One `up`/`down` at a time per state dir: two concurrent `up`s would start duplicates."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _process(svc: Service) -> psutil.Process | None:
    """The live process behind a record; None when it is gone or its pid was reused."""
    try:
        proc = psutil.Process(svc.pid)
        same = abs(proc.create_time() - svc.create_time) < 0.01 and proc.cmdline() == svc.cmd
        return proc if same and proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:  # gone, a zombie, or another user's process
        return None


# --- health --------------------------------------------------------------------------------


def _post_json(url: str, body: bytes) -> Any:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=5) as resp:
            return json.load(resp) if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None


def _worker_name(service_name: str) -> str:
    return f"loom-{service_name}"


def _worker_online(svc: Service) -> bool:
    """Registered in its pool with a heartbeat sent since this process started."""
    pool = urllib.parse.quote(svc.pool or "")
    workers = _post_json(f"{svc.url}/work_pools/{pool}/workers/filter", b"{}") or []
    for w in workers:
        beat = w.get("last_heartbeat_time")
        if w.get("name") == _worker_name(svc.name) and w.get("status") == "ONLINE" and beat:
            return dt.datetime.fromisoformat(beat).timestamp() >= svc.create_time - 2
    return False


def _healthy(svc: Service) -> bool:
    if svc.pool is not None:
        return _worker_online(svc)
    path = "/api/health" if svc.name == "prefect" else "/health"
    try:
        with _OPENER.open(svc.url + path, timeout=5) as resp:
            return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False


def _port_taken(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Bind as the servers do: connections lingering in TIME_WAIT leave a port usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- what to start -------------------------------------------------------------------------


def _url(host: str, port: int) -> str:
    """Where clients on this machine reach a server bound to `host` (wildcard -> loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _env(state_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    no_proxy = [v for v in (env.get("NO_PROXY"), "127.0.0.1,localhost,::1") if v]
    env.update(
        {
            MARKER_ENV: str(state_dir),
            "PREFECT_HOME": str(state_dir / "prefect"),
            "PYTHONUNBUFFERED": "1",  # logs current while a service runs
            "NO_PROXY": ",".join(no_proxy),
        }
    )
    env.update(settings)
    return env


def _server_specs(state_dir: Path, host: str, prefect_port: int, mlflow_port: int) -> list[_Spec]:
    py = sys.executable
    prefect_cmd = [py, "-m", "prefect", "server", "start", "--host", host]
    mlflow_cmd = [py, "-m", "mlflow", "server", "--host", host, "--port", str(mlflow_port)]
    mlflow_cmd += [
        "--backend-store-uri",
        f"sqlite:///{state_dir / 'mlflow.db'}",
        # Served through the server (mlflow-artifacts:/ URIs), so clients need no file access.
        "--artifacts-destination",
        str(state_dir / "mlflow-artifacts"),
        # One uvicorn process serves one machine's stages; the default 4 cost 4x the memory.
        "--workers",
        "1",
    ]
    return [
        _Spec(
            "prefect",
            [*prefect_cmd, "--port", str(prefect_port)],
            _env(
                state_dir,
                PREFECT_SERVER_API_HOST=host,
                PREFECT_SERVER_API_PORT=str(prefect_port),
                PREFECT_SERVER_ANALYTICS_ENABLED="false",  # nothing leaves the machine
            ),
            _url(host, prefect_port),
            port=prefect_port,
        ),
        _Spec(
            "mlflow",
            mlflow_cmd,
            # The GenAI job runner forks a dozen consumers; Loom submits no jobs.
            _env(state_dir, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
            _url(host, mlflow_port),
            port=mlflow_port,
        ),
    ]


def _worker_specs(
    state_dir: Path, api_url: str, mlflow_url: str, pools: list[str], gpu_slots: int
) -> list[_Spec]:
    """One process worker per pool in `pools`, and one per GPU slot on pool `gpu`.

    CPU workers see no GPU, so their flow runs never contend with a GPU slot. GPU slot i sees
    only device i and runs one flow run at a time (--limit 1): one GPU never runs two.
    """
    workers: list[tuple[str, str, str, list[str]]] = [
        (f"worker-{p}", p, "", []) for p in dict.fromkeys(pools)
    ]
    workers += [(f"worker-gpu-{i}", "gpu", str(i), ["--limit", "1"]) for i in range(gpu_slots)]
    specs = []
    for name, pool, devices, extra in workers:
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
        cmd += ["--type", "process", "--name", _worker_name(name), *extra]
        env = _env(
            state_dir,
            PREFECT_API_URL=api_url,
            MLFLOW_TRACKING_URI=mlflow_url,
            CUDA_VISIBLE_DEVICES=devices,
            # Flow runs send heartbeats; pools.ensure_zombie_automation crashes those that stop.
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(work_pools.HEARTBEAT_SECONDS),
        )
        specs.append(_Spec(name, cmd, env, api_url, pool=pool))
    return specs


# --- processes -----------------------------------------------------------------------------


def _start(state_dir: Path, spec: _Spec) -> Service:
    log = state_dir / "logs" / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with log.open("a") as out:
        out.write(f"--- {started_at} {shlex.join(spec.cmd)}\n")
        out.flush()
        # Own session: no controlling terminal, and `down` signals the whole group.
        proc = subprocess.Popen(
            spec.cmd,
            env=spec.env,
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    create_time = psutil.Process(proc.pid).create_time()
    return Service(
        spec.name, proc.pid, create_time, spec.url, spec.cmd, str(log), started_at, spec.pool
    )


def _terminate(procs: list[psutil.Process], grace: float, groups: Iterable[int] = ()) -> None:
    """SIGTERM process groups `groups` and the `procs` outside them; SIGKILL what is left
    after `grace` seconds."""
    groups = set(groups)
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGTERM)
    for proc in procs:
        # Not twice to group members: a second SIGTERM makes a Prefect worker skip its
        # graceful shutdown.
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) not in groups:
                proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)  # also reaps our own children
    if alive:
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _group(pid: int) -> list[psutil.Process]:
    """Process `pid`, its process group, and its descendants that left the group."""
    procs = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pid:
                procs[proc.pid] = proc
    with contextlib.suppress(psutil.Error):
        leader = psutil.Process(pid)
        procs.update((p.pid, p) for p in (leader, *leader.children(recursive=True)))
    return list(procs.values())


def _stop(services: list[Service], grace: float) -> None:
    """Stop services, each with everything it started: workers together first (they leave a
    live server cleanly), then the servers together."""
    for batch in ([s for s in services if s.pool], [s for s in services if not s.pool]):
        children = [c for c in (_CHILDREN.pop(s.pid, None) for s in batch) if c is not None]
        # A child of this process keeps its pid until reaped, even after it exits, so its
        # group is still the one it started; other records must prove they are that process.
        groups = {c.pid for c in children} | {s.pid for s in batch if _process(s)}
        _terminate([p for g in groups for p in _group(g)], grace, groups)
        for child in children:
            child.poll()  # reap one that died before the signal


def _strays(state_dir: Path) -> list[psutil.Process]:
    """Live processes carrying this state dir's marker: the services and what they started."""
    skip = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid not in skip and proc.environ().get(MARKER_ENV) == str(state_dir):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
    return found


def _wait_healthy(services: list[Service], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(services)
    while True:
        pending = [s for s in pending if not _healthy(s)]
        if not pending:
            return
        for svc in pending:
            if _process(svc) is None:
                raise ServicesError(_failure(svc, "exited while starting"))
        if time.monotonic() > deadline:
            raise ServicesError(_failure(pending[0], f"was not healthy after {timeout:.0f} s"))
        time.sleep(0.25)


def _failure(svc: Service, what: str) -> str:
    if svc.pool is None:
        where = f" ({svc.url}, port {urllib.parse.urlsplit(svc.url).port})"
    else:
        where = f" (pool {svc.pool}, Prefect API {svc.url})"
    return f"{svc.name}{where} {what}; last lines of {svc.log}:\n{_tail(Path(svc.log))}"


def _client_env(live: dict[str, Service]) -> dict[str, str]:
    env = {}
    if "prefect" in live:
        env["PREFECT_API_URL"] = live["prefect"].url + "/api"
    if "mlflow" in live:
        env["MLFLOW_TRACKING_URI"] = live["mlflow"].url
    return env


# --- API -----------------------------------------------------------------------------------


def up(
    state_dir: Path,
    *,
    host: str = DEFAULT_HOST,
    prefect_port: int = DEFAULT_PREFECT_PORT,
    mlflow_port: int = DEFAULT_MLFLOW_PORT,
    workers: list[str] | None = None,
    gpu_slots: int = 0,
    timeout: float = 90.0,
    grace: float = 10.0,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Start what is not running yet of: both servers, the pools' workers, `gpu_slots` GPU
    workers; create the `cpu`, `gpu` (and `workers`) process pools; wait until all are healthy.

    Running services are kept as they are (ports included). Returns {"started": [names],
    "already_running": [names], "env": {"PREFECT_API_URL": ..., "MLFLOW_TRACKING_URI": ...}}.
    On failure raises ServicesError, naming the service, its port and its log's last lines,
    after stopping everything this call started.
    """
    pools = list(workers or [])
    if "gpu" in pools:
        raise ServicesError("pool gpu gets one worker per device: use --gpu-slots N")
    if bad := [p for p in pools if not re.fullmatch(r"[\w-]+", p)]:
        raise ServicesError(f"work pool names are letters, digits, _ and -; got {bad}")
    if gpu_slots < 0:
        raise ServicesError(f"--gpu-slots must be >= 0, got {gpu_slots}")
    state_dir = state_dir.resolve()
    with _locked(state_dir):
        live = {s.name: s for s in _load(state_dir) if _process(s)}
        _save(state_dir, live.values())  # forget stale records
        kept = list(live)
        started: list[Service] = []
        try:
            servers = _server_specs(state_dir, host, prefect_port, mlflow_port)
            for spec in servers:
                if spec.name in live and live[spec.name].url != spec.url:
                    progress(
                        f"{spec.name} keeps running at {live[spec.name].url} (down to move it)"
                    )
            todo = [s for s in servers if s.name not in live]
            _check_ports(host, todo)
            _launch(state_dir, todo, live, started, progress)
            if todo:
                progress(f"waiting for {', '.join(s.name for s in todo)} to answer")
            _wait_healthy([live["prefect"], live["mlflow"]], timeout)
            api_url, mlflow_url = live["prefect"].url + "/api", live["mlflow"].url
            work_pools.ensure(api_url, dict.fromkeys([*work_pools.POOLS, *pools]))
            work_pools.ensure_zombie_automation(api_url)
            specs = _worker_specs(state_dir, api_url, mlflow_url, pools, gpu_slots)
            _launch(state_dir, [s for s in specs if s.name not in live], live, started, progress)
            _wait_healthy([s for s in live.values() if s.pool is not None], timeout)
        except BaseException:
            _stop(started, grace)
            for svc in started:
                live.pop(svc.name)
            _save(state_dir, live.values())
            raise
    return {"started": [s.name for s in started], "already_running": kept, "env": _client_env(live)}


def _check_ports(host: str, specs: list[_Spec]) -> None:
    """Before starting anything: a taken port would fail a server only seconds later."""
    for spec in specs:
        if spec.port is not None and _port_taken(host, spec.port):
            raise ServicesError(
                f"{spec.name}: port {spec.port} on {host} is already in use by another program; "
                f"choose another with --{spec.name}-port or LOOM_{spec.name.upper()}_PORT"
            )


def _launch(
    state_dir: Path,
    specs: list[_Spec],
    live: dict[str, Service],
    started: list[Service],
    progress: Callable[[str], None],
) -> None:
    for spec in specs:
        svc = _start(state_dir, spec)
        live[svc.name] = svc
        started.append(svc)
        _save(state_dir, live.values())  # recorded at once: `down` finds it even if we die
        progress(f"started {svc.name} (pid {svc.pid}, log {svc.log})")


def down(state_dir: Path, *, grace: float = 10.0) -> list[str]:
    """Stop every recorded service still running, workers first (so they leave a live server
    cleanly), then anything left that they started; forget all records. Returns the names
    of the services stopped."""
    state_dir = state_dir.resolve()
    if not state_dir.is_dir():
        return []
    with _locked(state_dir):
        services = _load(state_dir)
        stopped = [s.name for s in services if _process(s)]
        _stop(services, grace)
        _terminate(_strays(state_dir), grace)
        _save(state_dir, [])
    return stopped


def status(state_dir: Path) -> list[ServiceStatus]:
    """Each recorded service: running (healthy), unhealthy (alive, not answering), stopped."""
    rows = []
    for svc in _load(state_dir.resolve()):
        state: Literal["running", "stopped", "unhealthy"]
        if _process(svc) is None:
            state = "stopped"
        else:
            state = "running" if _healthy(svc) else "unhealthy"
        rows.append(ServiceStatus(svc.name, svc.pid, state, svc.url, svc.log))
    return rows


def service_env(state_dir: Path) -> dict[str, str]:
    """PREFECT_API_URL and MLFLOW_TRACKING_URI of the servers running from `state_dir`."""
    return _client_env({s.name: s for s in _load(state_dir.resolve()) if _process(s)})


def format_status(rows: list[ServiceStatus]) -> str:
    table = [("service", "pid", "state", "url", "log")]
    table += [(r.name, str(r.pid), r.state, r.url, r.log) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[4]])
        for row in table
    )
