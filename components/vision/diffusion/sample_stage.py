"""Stage "vision.sample": a trained diffusion model's samples for the prompts and guidance
scales listed in params, as PNG grids.

Input "model": a `DiffusionModel` directory (train_diffusion's output).
Output "samples": a directory of

    guidance_<g>.png        one row of `per_prompt` samples per prompt, at guidance g
    <i>_<slug>/guidance_<g>.png   prompt i's row alone, per guidance (for a closer look)
    index.json              {"prompts", "guidance", "sampler", "seed", "files": {prompt: {g: path}}}

Sample j of every prompt and scale starts from the noise of seed (seed, j), so the grids of one
prompt differ only by the guidance, and a column reads across prompts from the same noise.
The grids go to MLflow as artifacts. An empty prompt list, a label prompt on a text model (or
the reverse) or a label out of range fails before any sampling, naming the key.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from components.device import select_device
from components.stage import Dataset, Output, Stage, StageInputError, StageIO, StageResult
from components.vision.diffusion.config import SampleConfig
from components.vision.diffusion.saved import DiffusionModel
from components.vision.grid import image_grid, png_bytes

INDEX_FILE = "index.json"


def slug(prompt: str | int, limit: int = 40) -> str:
    """A file-name-safe form of a prompt: "a large red circle" -> "a-large-red-circle"."""
    text = re.sub(r"[^a-z0-9]+", "-", str(prompt).lower()).strip("-")
    return text[:limit].rstrip("-") or "prompt"


def guidance_name(scale: float) -> str:
    return f"guidance_{scale:g}.png"


def _prompts(config: SampleConfig, model: DiffusionModel, where: Path) -> list[str | int]:
    prompts: list[str | int] = (
        list(config.prompts) if model.condition == "text" else list(config.labels)
    )
    key = "prompts" if model.condition == "text" else "labels"
    other = "labels" if key == "prompts" else "prompts"
    if not prompts:
        raise StageInputError(
            f"sample.{key}: empty, but {where} is a {model.condition}-conditioned model "
            f"(give {key}; {other} are for the other kind)"
        )
    try:
        model.conditions(prompts)  # empty prompts, labels out of range: before any sampling
    except ValueError as err:
        raise StageInputError(f"sample.{key}: {err}") from None
    return prompts


def _run(config: SampleConfig, io: StageIO) -> StageResult:
    source = io.inputs["model"]
    model = DiffusionModel.load(source)
    prompts = _prompts(config, model, source)
    model.to(select_device(config.device, key="runtime.sample.device"))
    out = io.outputs["samples"]
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {str(p): {} for p in prompts}
    artifacts = []
    started = time.perf_counter()
    for scale in config.guidance:
        drawn = model.generate_batched(
            prompts, config.per_prompt, config.batch_size, guidance=scale,
            sampler=config.sampler, seed=config.seed,
        )  # fmt: skip
        pictures = drawn.permute(0, 2, 3, 1).numpy()  # [P · per_prompt, H, W, C]
        (out / guidance_name(scale)).write_bytes(
            png_bytes(image_grid(pictures, columns=config.per_prompt))
        )
        artifacts.append(Output("samples", guidance_name(scale)))
        for i, prompt in enumerate(prompts):
            own = pictures[i * config.per_prompt : (i + 1) * config.per_prompt]
            relative = f"{i:02d}_{slug(prompt)}/{guidance_name(scale)}"
            (out / relative).parent.mkdir(exist_ok=True)
            (out / relative).write_bytes(png_bytes(image_grid(own, columns=config.per_prompt)))
            files[str(prompt)][f"{scale:g}"] = relative
    seconds = time.perf_counter() - started
    index = {
        "prompts": prompts,
        "guidance": list(config.guidance),
        "per_prompt": config.per_prompt,
        "sampler": {"kind": config.sampler.kind, "steps": config.sampler.steps},
        "seed": config.seed,
        "files": files,
    }
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    artifacts.append(Output("samples", INDEX_FILE))
    count = len(prompts) * config.per_prompt * len(config.guidance)
    metrics = {
        "images": float(count),
        "sample_seconds": seconds,
        "images_per_second": count / max(seconds, 1e-9),
    }
    datasets = [
        Dataset("model", source, "input"),
        Dataset("samples", Output("samples"), "output", count),
    ]
    return StageResult(metrics=metrics, artifacts=artifacts, datasets=datasets)


STAGE = Stage(
    name="vision.sample",
    version="1",
    config=SampleConfig,
    inputs=("model",),
    outputs=("samples",),
    run=_run,
    key_metrics=("images",),
)
