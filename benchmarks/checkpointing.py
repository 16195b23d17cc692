"""A Transformer encoder training step with and without gradient checkpointing (the anchor).

    .venv/bin/python benchmarks/checkpointing.py [--device cpu|cuda] [--repeats 5] [--threads 1]
        [--depth 6] [--dim 256] [--heads 4] [--batch 2] [--length 1024] [--attention softmax]

Step: forward, mean-square loss, backward, SGD update, of `TransformerEncoder` (float32).
Time: best of `--repeats` steps after one warm-up step.

Peak activation memory: the most memory a step holds above what was held before it, with
parameters, their gradients (kept, zeroed in place) and the input already allocated, so what
remains is activations and temporaries. cuda: `torch.cuda.max_memory_allocated`. cpu: each
configuration runs in a fresh subprocess with glibc's mmap threshold fixed at 128 KiB (every
tensor over that is mapped on allocation and unmapped on free, so the resident set size follows
the live tensors); the peak RSS is reset (`/proc/self/clear_refs`) before the measured step
and read back (`VmHWM`) after it. Timing runs in another subprocess, with glibc's defaults.
CPU threads: 1 by default (see benchmarks/attention.py: the 2 cores are shared).

Target: checkpointing saves >= 60% of the peak activation memory at <= 25% more time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from components.nn.transformer import TransformerConfig, TransformerEncoder

MEMORY_TARGET = 0.60  # fraction of peak activation memory saved, at least
TIME_TARGET = 1.25  # time with checkpointing / time without, at most


def make_step(opts: dict, checkpointing: bool):
    """A closure running one training step; parameters' gradients exist after the first."""
    torch.manual_seed(0)
    config = TransformerConfig(
        dim=opts["dim"],
        depth=opts["depth"],
        heads=opts["heads"],
        attention=opts["attention"],
        max_len=opts["length"],
        gradient_checkpointing=checkpointing,
    )
    device = opts["device"]
    model = TransformerEncoder(config).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # no state: memory is activations
    x = torch.randn(opts["batch"], opts["length"], opts["dim"], device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


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


def best_seconds(step, repeats: int) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def measure(opts: dict) -> dict:
    """One configuration, in this process: `{"ms": ...}` or `{"mb": ...}`."""
    torch.set_num_threads(opts["threads"])
    step = make_step(opts, opts["checkpointing"])
    if opts["what"] == "time":
        return {"ms": 1e3 * best_seconds(step, opts["repeats"])}
    step()  # allocates the gradients; unmapped temporaries leave the RSS as it was
    return {"mb": peak_mb(step, opts["device"])}


def in_subprocess(opts: dict) -> dict:
    env = dict(os.environ)
    if opts["what"] == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # fixed: no dynamic growth
    cmd = [sys.executable, __file__, "--case", json.dumps(opts)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--attention", choices=["softmax", "linear"], default="softmax")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(json.loads(args.case))))
        return

    opts = {k: v for k, v in vars(args).items() if k != "case"}
    print(
        f"device {args.device}, threads {args.threads}: TransformerEncoder depth {args.depth}, "
        f"dim {args.dim}, heads {args.heads}, {args.attention} attention, batch {args.batch} x "
        f"{args.length} tokens, float32; SGD step, best of {args.repeats}"
    )
    print(f"{'checkpointing':>13} {'step ms':>9} {'peak activation MB':>19}")
    rows = {}
    for checkpointing in (False, True):
        row = {}
        for what in ("time", "memory"):
            row |= in_subprocess(opts | {"checkpointing": checkpointing, "what": what})
        rows[checkpointing] = row
        print(f"{checkpointing!s:>13} {row['ms']:>9.1f} {row['mb']:>19.1f}")

    saved = 1 - rows[True]["mb"] / rows[False]["mb"]
    slower = rows[True]["ms"] / rows[False]["ms"]
    print(
        f"\nmemory saved: {saved:.0%} (target >= {MEMORY_TARGET:.0%}: "
        f"{'met' if saved >= MEMORY_TARGET else 'NOT met'})"
    )
    print(
        f"time: {slower:.2f}x the unchecked step (target <= {TIME_TARGET:.2f}x: "
        f"{'met' if slower <= TIME_TARGET else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
