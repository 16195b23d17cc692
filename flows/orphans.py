"""Child processes that never outlive their parent: `python -m flows.orphans PPID -- CMD ...`.

The wrapper asks the kernel to send it SIGTERM when its parent dies (Linux `PR_SET_PDEATHSIG`;
the setting survives `exec`), checks the parent is still the one that started it, then execs
CMD in its place. So a temporary Prefect server or a stage process started by `loom run` ends
when `loom run` does, even when `loom run` is killed with SIGKILL and has no chance to stop
them. Where the kernel has no such setting (not Linux), CMD runs unguarded.

The signal fires when the parent *thread* that started the child ends: start guarded children
from a thread that outlives them (the main thread, or one that waits for the child).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def guarded(argv: list[str]) -> list[str]:
    """`argv` wrapped so that it dies with this process."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-m", "flows.orphans", str(os.getpid()), "--", *argv]


def main(args: list[str]) -> None:
    ppid, sep, *argv = args
    if sep != "--" or not argv:
        raise SystemExit("usage: python -m flows.orphans PPID -- CMD [ARG ...]")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
    if os.getppid() != int(ppid):  # the parent died before the guard was set
        raise SystemExit(128 + signal.SIGTERM)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
