"""The temporary Prefect server of a `loom run` that has no Prefect API configured.

Prefect starts such a server by itself, but in the caller's process group and with nothing
tying it to the caller: Ctrl-C in a terminal stops it before the flow can record anything
(the flow then retries for minutes against a dead API), and a `loom run` killed by SIGKILL
leaves it running. Loom starts it itself, with Prefect's own server class and command, but:

- in its own session, so a terminal's SIGINT reaches `loom run` only, which stops its stages,
  records their end, and stops the server last;
- under `flows.orphans`, so it dies with `loom run` whatever kills it;
- with Prefect's analytics off, the server's (PREFECT_SERVER_ANALYTICS_ENABLED=false) and
  the client's (DO_NOT_TRACK=1, see below): nothing leaves the machine, and a terminal gets
  no telemetry notice; bound to 127.0.0.1;
- announced in one line of Loom's own instead of Prefect's start and stop messages (which
  point at Prefect's docs for running a server; Loom's way is `loom services up`).

It serves the same database as Prefect's own temporary server (under PREFECT_HOME), so the
flow-run history is the same either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from typing import Any

from flows import orphans

# Prefect's client-side telemetry is set up when `prefect` is first imported: on a terminal
# and a fresh PREFECT_HOME it prints a notice ("Prefect collects anonymous usage data...")
# into `loom run`'s output, then queues usage events for Prefect's analytics service.
# `loom run` imports this module before anything imports Prefect, so DO_NOT_TRACK (Prefect's
# documented opt-out, read at import and at every event) is in place in time; it also
# reaches the stage processes and the server. A user's own DO_NOT_TRACK is kept.
os.environ.setdefault("DO_NOT_TRACK", "1")

# Prefect's own lines around its temporary server; `api()` says it in one line of Loom's.
_PREFECT_SERVER_MESSAGES = ("Starting temporary server on ", "Stopping temporary server on ")


class _QuietServerMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PREFECT_SERVER_MESSAGES)


def _server_class() -> type:
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class GuardedServer(SubprocessASGIServer):
        """Prefect's SubprocessASGIServer, started guarded and in its own session."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            cmd = [
                sys.executable, "-m", "uvicorn",
                "--app-dir", str(prefect.__module_path__.parent),
                "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on",
            ]  # fmt: skip
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
            return subprocess.Popen(
                orphans.guarded(cmd), env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )

        def stop(self) -> None:
            proc = self.server_process
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            super().stop()

    return GuardedServer


def drain_prefect_clients() -> None:
    """Send the logs and events still queued in this process before the server goes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # never started
            logs = APILogWorker.instance().drain()
            if hasattr(logs, "__await__"):
                await logs
        events = EventsWorker.drain_all()
        if isinstance(events, Awaitable):  # has __await__
            await events

    with contextlib.suppress(Exception):
        run_coro_as_sync(drain())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def api() -> Iterator[str]:
    """The Prefect API this process uses: the configured one, or a temporary server started
    here (stopped when the block ends, after this process's logs and events are sent)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    server = _server_class()(port=_free_port())
    previous = SubprocessASGIServer._instances.get(None)
    # Prefect's clients look its temporary server up under this key: let them find ours.
    SubprocessASGIServer._instances[None] = server
    quiet = _QuietServerMessages()
    prefect_logger = logging.getLogger("prefect")  # where SubprocessASGIServer logs them
    prefect_logger.addFilter(quiet)
    try:
        print(
            f"loom run: temporary Prefect server on {server.address} for this run (no "
            "PREFECT_API_URL set; `loom services up` keeps one running)",
            file=sys.stderr,
        )
        server.start(timeout=120)
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                drain_prefect_clients()
    finally:
        server.stop()
        prefect_logger.removeFilter(quiet)
        if previous is not None:
            SubprocessASGIServer._instances[None] = previous
        else:
            SubprocessASGIServer._instances.pop(None, None)
