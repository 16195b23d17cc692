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

import torch
from measure import best_seconds, in_subprocess, peak_mb

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


def measure(opts: dict) -> dict:
    """One configuration, in this process: `{"ms": ...}` or `{"mb": ...}`."""
    torch.set_num_threads(opts["threads"])
    step = make_step(opts, opts["checkpointing"])
    if opts["what"] == "time":
        return {"ms": 1e3 * best_seconds(step, opts["repeats"])}
    step()  # allocates the gradients; unmapped temporaries leave the RSS as it was
    return {"mb": peak_mb(step, opts["device"])}


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
            row |= in_subprocess(__file__, opts | {"checkpointing": checkpointing, "what": what})
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
