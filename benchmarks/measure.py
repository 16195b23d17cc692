"""Timing and peak-memory helpers shared by the torch benchmarks (attention, checkpointing).

Peak memory on CPU needs a fresh process per case: `in_subprocess` reruns the calling script
with `--case JSON` (glibc's mmap threshold fixed at 128 KiB for memory cases, so the resident
set size follows live tensors) and reads the JSON line it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_mb(step, device: str) -> float:
    """MB one call of `step` holds at its peak above what was held before it."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = proc_status_kib("VmRSS")
    step()
    return (proc_status_kib("VmHWM") - before) / 2**10


def best_seconds(step, repeats: int, min_total: float = 0.0, max_repeats: int = 100) -> float:
    """Fastest of at least `repeats` timed calls after a warm-up, and more while they took
    < `min_total` s in all."""
    step()  # warm-up
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_total and len(times) < max_repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def in_subprocess(script: str, case: dict) -> dict:
    """`python SCRIPT --case JSON` in a fresh process; its last stdout line, parsed."""
    env = dict(os.environ)
    if case["what"] == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # fixed: no dynamic growth
    cmd = [sys.executable, script, "--case", json.dumps(case)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
