"""Softmax attention (SDPA, the anchor) vs linear attention: forward + backward, by length.

    .venv/bin/python benchmarks/attention.py [--device cpu|cuda] [--lengths 1024 4096 16384]
                                             [--repeats 3] [--threads 1] [--batch 1] [--heads 4]

Shapes: q, k, v [B, H, N, D=64] float32, B=1 and H=4 by default (small, so SDPA at N = 16K
finishes on 2 CPU cores; a GPU is better judged at a real batch, e.g. --batch 8 --heads 8);
causal and not; `components.nn.attention.softmax_attention` (SDPA) and
`linear_attention` (chunk 64). Time: best of at least `--repeats` calls (more, up to 1 s of
them, for short ones) after one warm-up call. CPU threads: 1 by default. On a shared 2-core
machine, 2 threads make every parallel op wait for a scheduler slice whenever another process
holds a core (~10 ms per op, whatever its size), which swamps many-op code like linear attention.

Peak memory: the most memory one forward + backward holds above what was held before it
(q, k, v and the output gradient). cuda: `torch.cuda.max_memory_allocated`. cpu: each case
runs in a fresh subprocess with glibc's mmap threshold fixed at 128 KiB, so every tensor over
that is mapped on allocation and unmapped on free and the resident set size (RSS) follows the
live tensors; the peak RSS is reset (`/proc/self/clear_refs`) just before the measured call
and read back (`VmHWM`) after it. Timing runs in another subprocess, with glibc's defaults.

Target at N = 16K: linear >= 50x faster than SDPA, its memory growing linearly in N.
"""

from __future__ import annotations

import argparse
import json

import torch
from measure import best_seconds, in_subprocess, peak_mb

from components.nn.attention import linear_attention, softmax_attention

BATCH, HEADS, HEAD_DIM = 1, 4, 64
SPEED_TARGET = 50.0  # SDPA time / linear time at the longest length, at least
KINDS = {"softmax": softmax_attention, "linear": linear_attention}


def make_step(kind: str, n: int, causal: bool, device: str, batch: int = BATCH, heads: int = HEADS):
    """A closure running one forward + backward on fresh leaf q, k, v [batch, heads, n, 64]."""
    gen = torch.Generator(device).manual_seed(0)
    shape = (batch, heads, n, HEAD_DIM)
    q, k, v = (
        torch.randn(shape, generator=gen, device=device, requires_grad=True) for _ in range(3)
    )
    grad_out = torch.randn(shape, generator=gen, device=device)
    attend = KINDS[kind]

    def step() -> None:
        for t in (q, k, v):
            t.grad = None
        attend(q, k, v, causal).backward(grad_out)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def measure(case: dict) -> dict:
    """One case, in this process: `{"ms": ...}` or `{"mb": ...}`."""
    torch.set_num_threads(case["threads"])
    args = case["kind"], case["n"], case["causal"], case["device"], case["batch"], case["heads"]
    if case["what"] == "time":
        return {"ms": 1e3 * best_seconds(make_step(*args), case["repeats"], min_total=1.0)}
    make_step(case["kind"], 256, case["causal"], case["device"])()  # load kernels, pools
    return {"mb": peak_mb(make_step(*args), case["device"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--heads", type=int, default=HEADS)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(json.loads(args.case))))
        return

    print(
        f"device {args.device}, threads {args.threads}, q/k/v [{args.batch}, {args.heads}, N, "
        f"{HEAD_DIM}] float32, forward + backward, best of {args.repeats}"
    )
    print(f"{'causal':>6} {'N':>6} {'kind':>8} {'time ms':>10} {'peak MB':>9}")
    results: dict[tuple, dict] = {}
    for causal in (False, True):
        for n in args.lengths:
            for kind in KINDS:
                row = {}
                for what in ("time", "memory"):
                    case = dict(kind=kind, n=n, causal=causal, device=args.device, what=what)
                    case |= dict(batch=args.batch, heads=args.heads)
                    row |= in_subprocess(
                        __file__, case | {"repeats": args.repeats, "threads": args.threads}
                    )
                results[causal, n, kind] = row
                print(f"{causal!s:>6} {n:>6} {kind:>8} {row['ms']:>10.1f} {row['mb']:>9.1f}")
    report(results, args.lengths)


def report(results: dict[tuple, dict], lengths: list[int]) -> None:
    print("\nspeed: SDPA time / linear time (the anchor is SDPA, same run)")
    for causal in (False, True):
        ratios = [
            results[causal, n, "softmax"]["ms"] / results[causal, n, "linear"]["ms"]
            for n in lengths
        ]
        cells = "  ".join(f"N={n}: {r:.1f}x" for n, r in zip(lengths, ratios, strict=True))
        verdict = "met" if ratios[-1] >= SPEED_TARGET else "NOT met"
        print(f"  causal={causal!s:5}  {cells}   target >= {SPEED_TARGET:.0f}x: {verdict}")
    print("\nmemory growth: peak MB at N / peak MB at the previous N (linear in N: = N ratio)")
    for causal in (False, True):
        for kind in KINDS:
            mb = [results[causal, n, kind]["mb"] for n in lengths]
            steps = "  ".join(
                f"{b}->{a}: {mb[i + 1] / mb[i]:.2f}x"
                for i, (b, a) in enumerate(zip(lengths, lengths[1:], strict=False))
            )
            print(f"  causal={causal!s:5} {kind:>8}  {steps}")


if __name__ == "__main__":
    main()
