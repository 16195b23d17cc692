"""SIGINT / SIGTERM as one exception, so every Loom process stops the same way.

Inside `handled()`, the first SIGINT or SIGTERM raises `Interrupted` in the main thread: the
`finally`/`except` blocks on the way out (atomic outputs, MLflow runs, stage processes, the
temporary Prefect server) do their cleanup. Signals that arrive while that cleanup runs are
ignored, so it is not cut short; a third one exits at once (a cleanup that hangs can still be
left). The process then exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process got SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(err: BaseException) -> int:
    """128 + signal for an interrupt in any of its guises (ours, Python's, Prefect's)."""
    if isinstance(err, Interrupted):
        return err.exit_code
    signum = getattr(err, "signal", None)  # prefect.exceptions.TerminationSignal
    if isinstance(signum, int):
        return 128 + signum
    return 128 + signal.SIGINT


def signal_name(err: BaseException) -> str:
    return signal.Signals(exit_code(err) - 128).name


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into `Interrupted` while the block runs (main thread only)."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1:
            raise Interrupted(signum)
        if len(received) >= 3:
            print(f"{signal.Signals(signum).name} again: exiting now", file=sys.stderr)
            os._exit(128 + signum)

    try:
        previous = {s: signal.signal(s, handler) for s in SIGNALS}
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
