"""Stage "action.evaluate": an online action detector scored on a split's streams.

Inputs: "model" (stage train_action) and "features" (stage extract_features). Output
"report": metrics.json, per_class.json (AP and cAP per class), timeline.png (the split's
first stream: truth against the prediction, frame by frame) and timeline.json (for
`dvc plots`). Metrics (DVC and MLflow): per-frame mAP and cAP over the action classes
(background excluded, as on THUMOS'14 / TVSeries), onset mAP (`metrics.onset_map`), "ap/<c>",
and the streaming latency: `OnlineDetector.step` per frame on `threads` CPU threads
(frame_seconds, frames_per_second: wall-clock, so MLflow only). Every frame is scored from
its past only (the batched form equals the streaming one).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from components.action.config import EvaluateActionConfig
from components.action.metrics import frame_map, onset_map
from components.action.saved import ActionDetector
from components.action.store import FEATURES_FORMAT, read_features, read_meta
from components.stage import Output, Stage, StageInputError, StageIO, StageResult


def _latency(detector: ActionDetector, features: torch.Tensor, frames: int) -> float:
    """Seconds per frame of `OnlineDetector.step` over the stream's first `frames`, in the
    steady state: the warm-up runs past a full window, so OadTR's graph is traced before the
    timing starts (traced inside it, the 300-frame figure read 407 frames/s for 2,530)."""
    online = detector.online()
    window = getattr(detector.network.config, "window", 0)
    for f in features[: window + 8]:  # warm-up
        online.step(f)
    online.reset()  # the stream forgotten, the traced graph kept
    shown = features[:frames]
    started = time.perf_counter()
    for f in shown:
        online.step(f)
    return (time.perf_counter() - started) / max(1, len(shown))


def _run(config: EvaluateActionConfig, io: StageIO) -> StageResult:
    source, model_dir = io.inputs["features"], io.inputs["model"]
    meta = read_meta(source, FEATURES_FORMAT)
    detector = ActionDetector.load(model_dir)
    classes = list(meta["classes"])
    if detector.classes != classes:
        raise StageInputError(
            f"{model_dir}: the detector's classes {detector.classes} are not the features' "
            f"{classes} ({source / 'meta.json'})"
        )
    entries = meta["streams"].get(config.split, [])
    if not entries:
        raise StageInputError(f"{source / 'meta.json'}: no {config.split} streams")
    with torch_threads(config.threads):
        return _evaluate(config, io, detector, entries, meta, classes)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's CPU threads set to `count` inside, restored after (a stage may run in-process,
    as the tests run it: the setting must not leak)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _evaluate(
    config: EvaluateActionConfig,
    io: StageIO,
    detector: ActionDetector,
    entries: list[dict],
    meta: dict,
    classes: list[str],
) -> StageResult:
    source = io.inputs["features"]
    probs, labels, instances, offset = [], [], [], 0
    for entry in entries:
        stored = read_features(source, meta, entry)
        detector.check(stored.features, str(stored.path))
        probs.append(detector.probabilities(stored.features).numpy())
        labels.append(stored.labels.numpy())
        instances += [
            (i["label"], i["start"] + offset, i["end"] + offset) for i in stored.instances
        ]
        offset += len(stored.labels)
    first = read_features(source, meta, entries[0])
    all_probs, all_labels = np.concatenate(probs), np.concatenate(labels)
    background = int(meta["background"])
    scores = frame_map(all_probs, all_labels, classes, background)
    onset = onset_map(all_probs, all_labels, instances, classes, config.onset_frames, background)
    seconds = _latency(detector, first.features, config.latency_frames)

    out = io.outputs["report"]
    out.mkdir(parents=True)
    per_class = {name: {"ap": scores[f"ap/{name}"], "cap": scores[f"cap/{name}"]}
                 for name in classes if f"ap/{name}" in scores}  # fmt: skip
    (out / "per_class.json").write_text(json.dumps(per_class, indent=2) + "\n")
    shown = min(config.timeline, len(labels[0]))
    predicted = probs[0][:shown].argmax(1)
    rows = [{"frame": t, "truth": int(labels[0][t]), "predicted": int(predicted[t])}
            for t in range(shown)]  # fmt: skip
    (out / "timeline.json").write_text(json.dumps(rows) + "\n")
    _plot_timeline(labels[0][:shown], probs[0][:shown], classes, out / "timeline.png")
    metrics = {
        "map": scores["map"],
        "cmap": scores["cmap"],
        "onset_map": onset,
        "frames": float(len(all_labels)),
        "frame_seconds": seconds,
        "frames_per_second": 1 / max(seconds, 1e-12),
    }
    metrics |= {k: v for k, v in scores.items() if k.startswith("ap/") and not np.isnan(v)}
    summary = {"split": config.split, "model": detector.kind, "metrics": metrics}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = ("metrics.json", "per_class.json", "timeline.json", "timeline.png")
    return StageResult(metrics=metrics, artifacts=[Output("report", name) for name in files])


def _plot_timeline(truth: np.ndarray, probs: np.ndarray, classes: list[str], path: Path) -> None:
    """The class probabilities over time with the true label drawn over them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.imshow(probs.T, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1)
    axes.plot(np.arange(len(truth)), truth, color="tab:red", linewidth=1.2, label="truth")
    axes.set_yticks(range(len(classes)), classes, fontsize=7)
    axes.set(xlabel="frame", title="predicted class probabilities (grey) and the truth (red)")
    axes.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


STAGE = Stage(
    name="action.evaluate",
    version="1",
    config=EvaluateActionConfig,
    inputs=("model", "features"),
    outputs=("report",),
    run=_run,
    key_metrics=("map", "cmap", "onset_map", "frames_per_second"),
)
