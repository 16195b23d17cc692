"""Stage "vision.evaluate_diffusion": a diffusion model's samples scored by Loom's own models.

Inputs:
    model      a `DiffusionModel` directory (train_diffusion's output)
    features   the `FeatureNet` trained on the real images (stage feature_net)
    images     those real images (stage images): prompts, reference and floor
    detector   optional: a DETR (stage detector): of the shapes, for compositional scoring
               of a model with held-out bindings; else of the images' classes (digits-det)
Output "report": a directory of
    metrics.json              every figure below
    guidance.json             one row per guidance scale: fd, prompt_accuracy,
                              compositional_accuracy (the DVC plot against guidance)
    guidance.png              the same, drawn
    samples_<g>.png           the first `grid_images` samples at guidance g, their prompts' order
    compositional_<g>.png     the held-out two-object samples at g (with a detector)

The val images without a held-out phrase are cut into two halves of n = min(`prompts`,
half of them): the first half's captions are the prompts, the second half is the reference.
Per guidance scale g (metrics "<name>/g<g>"), on one sample per prompt, each from its own noise:
  fd                 Fréchet distance of the feature network's features of the samples to
                     those of the reference; "fd/real" is the floor: the prompts' own images
                     against the same reference (n real vs n real)
  prompt_accuracy    the share of samples whose predicted attributes (every head) match their
                     prompt's; "prompt_accuracy/real": the real images' own, the judge's ceiling
  compositional      (detector) held-out two-object prompts judged by DETR: count, each
                     object's shape and colour, the relation; "compositional_single": the
                     held-out bindings alone; "compositional/real": real val images against
                     their own captions, the judge's ceiling
  detected           (detector, no held-out bindings: digits) the share of samples in which
                     the detector finds exactly one object, of the prompt's class;
                     "detected/real": the real images'
The best over scales: "fd" (lowest), "prompt_accuracy", "compositional_accuracy" (highest).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from components.detection.saved import Detector
from components.device import select_device
from components.stage import Output, Stage, StageInputError, StageIO, StageResult
from components.vision.data.shapes import SHAPES, parse_caption
from components.vision.data.store import ImageTable, read_images, read_meta
from components.vision.diffusion.evaluation import compositional
from components.vision.diffusion.evaluation.config import EvaluateDiffusionConfig
from components.vision.diffusion.evaluation.frechet import frechet_distance
from components.vision.diffusion.saved import DiffusionModel
from components.vision.diffusion.stage import holds_phrase
from components.vision.features.heads import agreement, expected
from components.vision.features.saved import FeatureNet
from components.vision.grid import image_grid, png_bytes


def scale_name(scale: float) -> str:
    return f"g{scale:g}"


def _in_distribution(table: ImageTable, held_out: list[str]) -> list[int]:
    """Rows whose caption holds none of the held-out phrases."""
    return [
        i for i, c in enumerate(table.captions) if not any(holds_phrase(c, p) for p in held_out)
    ]


class _Sampler:
    """Draws images [N, H, W, C] for prompts, each from its own seeded noise."""

    def __init__(self, model: DiffusionModel, config: EvaluateDiffusionConfig):
        self.model, self.config = model, config

    def __call__(self, prompts: list[str], guidance: float, seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(prompts), *self.model.latent_shape), generator=generator)
        drawn = self.model.generate_batched(
            prompts, 1, self.config.batch_size, noise=noise, progress=f"samples g{guidance:g}",
            guidance=guidance, sampler=self.config.sampler, seed=seed,
        )  # fmt: skip
        return drawn.permute(0, 2, 3, 1).numpy()


def _detector(io: StageIO, model: DiffusionModel, classes: tuple[str, ...]) -> Detector | None:
    """The detector input: of SHAPES for a model with held-out bindings, else of the
    images' own classes."""
    if "detector" not in io.inputs:
        return None
    where = io.inputs["detector"]
    detector = Detector.load(where)
    wanted, why = (
        (SHAPES, "compositional scoring reads shapes prompts (the model has held_out phrases)")
        if model.held_out
        else (classes, "without held_out phrases it judges the images' classes")
    )
    if tuple(detector.classes) != tuple(wanted):
        raise StageInputError(
            f"{where}: the detector's classes {list(detector.classes)} are not "
            f"{list(wanted)}: {why}"
        )
    return detector


def _run(config: EvaluateDiffusionConfig, io: StageIO) -> StageResult:
    model_dir, images_dir = io.inputs["model"], io.inputs["images"]
    model = DiffusionModel.load(model_dir)
    if model.condition != "text":
        raise StageInputError(f"{model_dir}: a label-conditioned model; prompts are captions")
    net = FeatureNet.load(io.inputs["features"])
    meta = read_meta(images_dir)
    if (net.size, net.channels) != (meta.size, meta.channels):
        raise StageInputError(
            f"{io.inputs['features']}: a feature network for {net.size} px × {net.channels} "
            f"channels, but {images_dir} holds {meta.size} px × {meta.channels}"
        )
    detector = _detector(io, model, meta.classes)
    singles: list[str] = []
    pairs: list[str] = []
    if detector is not None and model.held_out:
        try:
            size = config.detector.size
            singles, pairs = compositional.held_out_prompts(model.held_out, size)
        except ValueError as err:
            raise StageInputError(f"{model_dir}: {err}") from None
    val = read_images(images_dir / "val.parquet")
    in_distribution = _in_distribution(val, model.held_out)
    half = min(config.prompts, len(in_distribution) // 2)
    # two disjoint halves of the val images the feature network never saw: the prompts' own
    # images and the reference (not train images: the network learnt those, and their
    # features sit apart from unseen ones': on digits, FD 11.4 train vs val, 6.0 samples vs val)
    val_rows, reference_rows = in_distribution[:half], in_distribution[half : 2 * half]
    if half < 2:
        raise StageInputError(
            f"{images_dir / 'val.parquet'}: {len(in_distribution)} val images without a "
            "held-out phrase: at least 4 are needed (two halves of at least 2)"
        )
    prompts = [val.captions[i] for i in val_rows]
    try:
        wanted = [expected(net.heads, val.captions[i], val.labels[i]) for i in val_rows]
    except ValueError as err:
        raise StageInputError(f"{images_dir / 'val.parquet'}: {err}") from None
    model.to(select_device(config.device, key="runtime.evaluate_diffusion.device"))

    real, shown = net.features_and_predict(val.images[val_rows])
    reference = net.features(val.images[reference_rows])
    metrics: dict[str, float] = {
        "fd/real": frechet_distance(real.numpy(), reference.numpy()),
        "prompt_accuracy/real": agreement(shown, wanted)["all"],
        "prompts": float(len(prompts)),
    }
    out = io.outputs["report"]
    out.mkdir(parents=True)
    artifacts: list[Output] = []
    draw = _Sampler(model, config)
    rows: list[dict[str, float]] = []
    started = time.perf_counter()
    classes: list[str] = []
    if detector is not None and not pairs:
        if [h.name for h in net.heads] != ["class"]:
            raise StageInputError(
                f"{io.inputs['detector']}: without held_out phrases the detector judges class "
                f"labels, but {io.inputs['features']} reads {[h.name for h in net.heads]}"
            )
        classes = [next(iter(w["class"])) for w in wanted]
    if detector is not None and pairs:
        real_rows = [i for i in val_rows if len(parse_caption(val.captions[i]).objects) <= 2]
        judged = _judge(
            detector, config, val.images[real_rows], [val.captions[i] for i in real_rows]
        )
        metrics["compositional/real"] = judged["accuracy"]
    elif detector is not None:
        metrics["detected/real"] = _judge_classes(detector, config, val.images[val_rows], classes)
    for scale in config.guidance:
        g = scale_name(scale)
        images = draw(prompts, scale, config.seed)
        try:
            net.check(images, where=f"{model_dir}: its samples")
        except ValueError as err:
            raise StageInputError(str(err)) from None
        features, predicted = net.features_and_predict(images)
        fd = frechet_distance(features.numpy(), reference.numpy())
        scores = agreement(predicted, wanted)
        row = {"guidance": float(scale), "fd": fd, "prompt_accuracy": scores.pop("all")}
        metrics[f"fd/{g}"], metrics[f"prompt_accuracy/{g}"] = fd, row["prompt_accuracy"]
        metrics |= {f"prompt_accuracy/{head}/{g}": v for head, v in scores.items()}
        name = f"samples_{g}.png"
        _write_grid(out / name, images[: config.grid_images])
        artifacts.append(Output("report", name))
        if detector is not None and not pairs:
            row["detected_accuracy"] = _judge_classes(detector, config, images, classes)
            metrics[f"detected/{g}"] = row["detected_accuracy"]
        elif detector is not None:
            c = config.detector
            single = _judge_samples(detector, draw, config, singles, scale, config.seed + 1)
            pair_prompts = [p for p in pairs for _ in range(c.per_prompt)]
            pair_images = draw(pair_prompts, scale, config.seed + 2)
            judged = _judge(detector, config, pair_images, pair_prompts)
            metrics[f"compositional_single/{g}"] = single["accuracy"]
            metrics |= {f"compositional/{k}/{g}": v for k, v in judged.items() if k != "accuracy"}
            metrics[f"compositional/{g}"] = row["compositional_accuracy"] = judged["accuracy"]
            name = f"compositional_{g}.png"
            _write_grid(out / name, pair_images[: config.grid_images])
            artifacts.append(Output("report", name))
        rows.append(row)
    seconds = time.perf_counter() - started
    metrics["fd"] = min(r["fd"] for r in rows)
    metrics["prompt_accuracy"] = max(r["prompt_accuracy"] for r in rows)
    if pairs:
        metrics["compositional_accuracy"] = max(r["compositional_accuracy"] for r in rows)
        metrics["compositional_prompts"] = float(len(pairs))
    elif detector is not None:
        metrics["detected_accuracy"] = max(r["detected_accuracy"] for r in rows)
    metrics["sample_seconds"] = seconds

    (out / "guidance.json").write_text(json.dumps(rows, indent=2) + "\n")
    _plot(rows, out / "guidance.png")
    summary = {"model": str(model_dir), "held_out": model.held_out, "metrics": metrics,
               "prompts": prompts[:20], "compositional_prompts": pairs}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in ("guidance.json", "guidance.png", "metrics.json"):
        artifacts.append(Output("report", name))
    return StageResult(metrics=metrics, artifacts=artifacts)


def _judge_classes(detector: Detector, config: EvaluateDiffusionConfig, images, classes) -> float:
    c = config.detector
    found = compositional.detect(detector, np.asarray(images), c.scale, c.threshold)
    verdicts = [compositional.judge_class(n, f) for n, f in zip(classes, found, strict=True)]
    return compositional.rates(verdicts)["accuracy"]


def _judge(detector: Detector, config: EvaluateDiffusionConfig, images, prompts) -> dict:
    c = config.detector
    found = compositional.detect(detector, np.asarray(images), c.scale, c.threshold)
    verdicts = [compositional.judge(p, f) for p, f in zip(prompts, found, strict=True)]
    return compositional.rates(verdicts)


def _judge_samples(detector, draw, config, prompts, scale, seed) -> dict:
    repeated = [p for p in prompts for _ in range(config.detector.per_prompt)]
    return _judge(detector, config, draw(repeated, scale, seed), repeated)


def _write_grid(path: Path, images: np.ndarray) -> None:
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    path.write_bytes(png_bytes(image_grid(images, columns=8)))


def _plot(rows: list[dict[str, float]], path: Path) -> None:
    """FD and accuracies against guidance, two panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    scales = [r["guidance"] for r in rows]
    left, right = figure.subplots(1, 2)
    left.plot(scales, [r["fd"] for r in rows], marker="o")
    left.set(xlabel="guidance scale", ylabel="Fréchet distance", title="FD (lower is better)")
    for key in ("prompt_accuracy", "compositional_accuracy", "detected_accuracy"):
        if key in rows[0]:
            right.plot(scales, [r[key] for r in rows], marker="o", label=key.replace("_", " "))
    right.set(xlabel="guidance scale", ylim=(0, 1), title="accuracy")
    right.legend()
    figure.tight_layout()
    figure.savefig(path)


STAGE = Stage(
    name="vision.evaluate_diffusion",
    version="1",
    config=EvaluateDiffusionConfig,
    inputs=("model", "features", "images"),
    optional_inputs=("detector",),
    outputs=("report",),
    run=_run,
    key_metrics=("fd", "prompt_accuracy", "compositional_accuracy", "detected_accuracy"),
)
