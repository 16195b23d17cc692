"""Online action detection on the generated streams: RNN vs GRU vs LSTM vs OadTR (softmax and
linear attention), on the same features and budget, and OadTR's streaming latency.

    .venv/bin/python benchmarks/action.py [--steps 800] [--threads 1] [--device cpu|cuda]
        [--autoencoder data/autoencoders/kl_shapes] [--models rnn gru lstm oadtr oadtr_linear]
        [--latency-windows 64 256 1024] [--json out.json]

Data: params.yaml `action_streams`, rendered here in memory by the stage's own code, through
the pipeline's kl_shapes autoencoder (`--autoencoder`, made by `dvc repro
autoencoder@kl_shapes`) as params.yaml `extract_features` says: the same features
`extract_features` stores. Every model trains from `torch.manual_seed(0)` through the one
engine with its params.yaml `train_action.<name>` recipe (oadtr_linear, oadtr_causal: see
`recipe`) for `--steps` steps on the train streams, and is scored on the test streams, every
frame from its past only: per-frame mAP and cAP over the action classes (background
excluded), onset mAP (each instance's first 4 frames), train seconds, and the streaming
latency of `OnlineDetector.step` (frames per second over 300 frames, on one thread; training
on `--threads`).

Latency against the history length: OadTR (untrained, the same layers) stepped online at each
of `--latency-windows`, after a full window: windowed softmax and linear attention (every
step re-encodes its T frames: O(T²) and O(T) per step) and the causal linear form (running
sums: O(1) per step at any T).

Targets (issue 19): OadTR >= LSTM + 5 mAP points and >= 0.8 mAP on the test streams;
streaming >= 2,000 frames/s on one CPU core for OadTR at T = 64; causal linear OadTR at
T = 1,024 no slower per frame than softmax at T = 64.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from components.action.config import ActionFeaturesConfig, OadTRConfig, StreamsConfig
from components.action.features import frame_features
from components.action.metrics import frame_map, onset_map
from components.action.models import network
from components.action.saved import ActionDetector
from components.action.streaming import OnlineDetector
from components.action.streams import ACTIONS, render_stream
from components.action.task import ActionTask
from components.action.train_config import TrainActionConfig
from components.config import build
from components.train import train
from components.vision.autoencoder.saved import Autoencoder

ROOT = Path(__file__).resolve().parent.parent
LATENCY_FRAMES = 300
ONSET_FRAMES = 4


def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def load_streams(args, params) -> dict[str, list[tuple[torch.Tensor, torch.Tensor, list]]]:
    """{split: [(features [N, D], labels [N], instances)]} as the pipeline makes them."""
    streams = build(StreamsConfig, params["action_streams"])
    features = build(ActionFeaturesConfig, params["extract_features"])
    if not (args.autoencoder / "config.json").is_file():
        raise SystemExit(f"--autoencoder {args.autoencoder}: not found; make it with "
                         "`dvc repro autoencoder@kl_shapes`")  # fmt: skip
    autoencoder = Autoencoder.load(args.autoencoder, device=args.device)
    counts = {
        "train": streams.train_streams,
        "val": streams.val_streams,
        "test": streams.test_streams,
    }
    out: dict[str, list] = {}
    for split, count in counts.items():
        out[split] = []
        for i in range(count):
            s = render_stream(streams, split, i)
            f = frame_features(
                autoencoder, torch.from_numpy(s.frames), features.pool, features.motion
            )
            instances = [(x.label, x.start, x.end) for x in s.instances]
            out[split].append((f.cpu(), torch.from_numpy(s.labels), instances))
    return out


CAUSAL_WINDOW, CAUSAL_BATCH = 1024, 4


def recipe(params: dict, name: str, steps: int, device: str) -> TrainActionConfig:
    """params.yaml's `train_action.<name>`. oadtr_linear is oadtr's with linear attention;
    oadtr_causal is oadtr's in the streaming form (causal linear attention) with a training
    context of T = CAUSAL_WINDOW frames, CAUSAL_BATCH of them a step (4,096 frames, all in
    the loss after a 16-frame burn-in)."""
    base = "oadtr" if name in ("oadtr_linear", "oadtr_causal") else name
    config = build(TrainActionConfig, params["train_action"][base])
    if name == "oadtr_linear":
        config = replace(config, oadtr=replace(config.oadtr, attention="linear"))
    if name == "oadtr_causal":
        causal = replace(config.oadtr, attention="linear", causal=True, window=CAUSAL_WINDOW)
        train_config = replace(config.train, batch_size=CAUSAL_BATCH)
        config = replace(config, oadtr=causal, burn_in=16, train=train_config)
    return replace(config, train=replace(config.train, steps=steps, device=device, progress=False,
                                         checkpoint_every=None))  # fmt: skip


def frames_per_second(model: torch.nn.Module, features: torch.Tensor, warm: int = 10) -> float:
    """Steps `warm` frames (the timed ones then come after that much history), then times
    LATENCY_FRAMES steps."""
    online = OnlineDetector(model.cpu())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the target is a figure of one CPU core, whatever trained
    try:
        for f in features[:warm]:
            online.step(f)
        timed = features[warm : warm + LATENCY_FRAMES]
        started = time.perf_counter()
        for f in timed:
            online.step(f)
        return len(timed) / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def run_model(name: str, params: dict, data: dict, args) -> dict:
    config = recipe(params, name, args.steps, args.device)
    dim = data["train"][0][0].shape[1]
    pairs = {split: [(f, lab) for f, lab, _ in streams] for split, streams in data.items()}
    task = ActionTask(config, dim, len(ACTIONS), pairs["train"], pairs["val"])
    torch.manual_seed(0)
    started = time.perf_counter()
    result = train(task, config.train)
    seconds = time.perf_counter() - started
    detector = ActionDetector(result.model.cpu().eval(), ACTIONS)
    probs, labels, instances, offset = [], [], [], 0
    for f, lab, inst in data["test"]:
        probs.append(detector.probabilities(f))
        labels.append(lab)
        instances += [(k, a + offset, b + offset) for k, a, b in inst]
        offset += len(lab)
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    scores = frame_map(p, y, ACTIONS)
    return {
        "map": scores["map"],
        "cmap": scores["cmap"],
        "onset_map": onset_map(p, y, instances, ACTIONS, ONSET_FRAMES),
        "train_seconds": seconds,
        "frames_per_second": frames_per_second(
            detector.network, data["test"][0][0], warm=getattr(config.oadtr, "window", 64)
        ),
        "parameters": sum(q.numel() for q in detector.network.parameters()),
    }


def latency_table(params: dict, dim: int, windows: list[int]) -> dict:
    """frames/s of OadTR stepped online, untrained: windowed softmax and linear at each T
    (traced, see OnlineDetector), and causal linear with a state of T frames behind it (its
    step does not depend on T)."""
    base = build(OadTRConfig, params["train_action"]["oadtr"]["oadtr"])
    out = {}
    for kind in ("softmax", "linear", "causal"):
        for window in windows:
            torch.manual_seed(0)
            attention = "softmax" if kind == "softmax" else "linear"
            config = replace(base, window=window, attention=attention, causal=kind == "causal")
            model = network("oadtr", config, dim, len(ACTIONS))
            # steady state: the timed steps come after a full window (a state of T frames)
            features = torch.randn(window + LATENCY_FRAMES, dim)
            out[f"{kind}@{window}"] = frames_per_second(model, features, window)
    return out


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--threads", type=int, default=1, help="training (latency: 1 thread)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autoencoder", type=Path, default=ROOT / "data/autoencoders/kl_shapes")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["rnn", "gru", "lstm", "oadtr", "oadtr_linear", "oadtr_causal"],
    )
    parser.add_argument("--latency-windows", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = _params()
    started = time.perf_counter()
    data = load_streams(args, params)
    frames = {s: sum(len(lab) for _, lab, _ in v) for s, v in data.items()}
    dim = data["train"][0][0].shape[1]
    print(
        f"device {args.device}, threads {args.threads}, torch {torch.__version__}: streams "
        f"{frames} frames, features {dim}-d, {args.steps} steps each"
    )
    results = {}
    header = ("model", "mAP", "cAP", "onset", "train s", "frames/s", "params")
    print("".join(f"{h:>10}" for h in header))
    for name in args.models:
        r = results[name] = run_model(name, params, data, args)
        row = (
            f"{r['map']:.3f}",
            f"{r['cmap']:.3f}",
            f"{r['onset_map']:.3f}",
            f"{r['train_seconds']:.1f}",
            f"{r['frames_per_second']:.0f}",
            f"{r['parameters']:,d}",
        )
        print("".join(f"{v:>10}" for v in (name, *row)))
    latency = latency_table(params, dim, args.latency_windows)
    print("\nOadTR streaming frames/s by history T (untrained, one step per frame):")
    for key, value in latency.items():
        print(f"  {key:>14}: {value:8.0f}")
    variants = [n for n in ("oadtr", "oadtr_linear", "oadtr_causal") if n in results]
    if variants and "lstm" in results:
        best = max(variants, key=lambda n: results[n]["map"])
        score = results[best]["map"]
        gap = 100 * (score - results["lstm"]["map"])
        print(f"\nbest OadTR ({best}) - LSTM: {gap:+.1f} mAP points (target >= +5: "
              f"{_verdict(gap >= 5)}); mAP {score:.3f} "
              f"(target >= 0.8: {_verdict(score >= 0.8)})")  # fmt: skip
    if "softmax@64" in latency:
        fast = latency["softmax@64"]
        print(
            f"OadTR T=64 softmax: {fast:.0f} frames/s (target >= 2,000: {_verdict(fast >= 2000)})"
        )
        if "causal@1024" in latency:
            ratio = latency["causal@1024"] / fast
            print(f"causal linear T=1024 / softmax T=64 frames/s: {ratio:.2f} (target >= 1.0: "
                  f"{_verdict(ratio >= 1)})")  # fmt: skip
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"models": results, "latency": latency}, indent=2))


if __name__ == "__main__":
    main()
