"""`loom generate PROMPT`: images from a trained text-conditioned diffusion model.

    loom generate "a handwritten seven"                        # the project's newest model
    loom generate "a large red circle" -n 16 --guidance 5 --sampler dpmpp_2m --steps 20
    loom generate "a small blue square" --run 3f2a9c --seed 7 --out square.png

Writes one PNG grid (default `generated.png`): `-n` samples of the prompt, sample j from the
noise of seed (--seed, j), so the same command draws the same images. The model is --model DIR,
the one a `train_diffusion@...` --run registered, or the project's newest `data/diffusion/*`.

Every failure is a `GenerateError` raised before anything is written: an empty prompt, a run
that made no diffusion model, a directory that is none, a sampler or guidance out of range, a
prompt longer than the model's context when its policy is `truncate: error` (with `warn` it is
cut to the context, and the warning says so). Byte-level BPE encodes any text, so there are no
unknown words.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from flows import atomic, project, trained

DIFFUSION = trained.ModelKind("vision.train_diffusion", "diffusion model", "train_diffusion",
                              newest=True)  # fmt: skip
GRID_COLUMNS = 8


class GenerateError(ValueError):
    """What `loom generate` cannot do, and why."""


def load_model(directory: Path) -> Any:
    from components.stage import StageInputError
    from components.vision.diffusion.saved import DiffusionModel

    if not (directory / "config.json").is_file():
        raise GenerateError(f"{directory}: not a diffusion model directory (no config.json)")
    try:
        return DiffusionModel.load(directory)
    except (StageInputError, ValueError) as err:
        raise GenerateError(str(err)) from None


def generate(
    prompt: str,
    out: Path,
    count: int = 8,
    steps: int = 50,
    guidance: float = 3.0,
    sampler: str = "ddim",
    seed: int = 0,
    run: str | None = None,
    model: Path | None = None,
) -> tuple[Path, list[str]]:
    """Draw `count` images of `prompt` into the PNG grid `out`; returns the model directory
    used and any warnings (a truncated prompt)."""
    from components.config import ConfigError, build
    from components.vision.diffusion.samplers import SamplerConfig
    from components.vision.grid import image_grid, png_bytes

    if not prompt.strip():
        raise GenerateError('an empty prompt: say what to draw, e.g. "a handwritten seven"')
    if count < 1:
        raise GenerateError(f"-n {count}: expected a number of images >= 1")
    if not guidance >= 0:
        raise GenerateError(f"--guidance {guidance}: expected a float >= 0 (1 = no guidance)")
    try:
        sampling = build(SamplerConfig, {"kind": sampler, "steps": steps}, "sampler")
    except ConfigError as err:
        raise GenerateError(f"--sampler/--steps: {err}") from None
    try:
        root: Path | None = project.find_root()
    except project.ProjectError:
        root = None
    with tempfile.TemporaryDirectory(prefix="loom-generate-") as scratch:
        try:
            directory = trained.model_dir(DIFFUSION, root, run, model, Path(scratch))
        except trained.ModelNotFound as err:
            raise GenerateError(str(err)) from None
        diffusion = load_model(directory)
    if diffusion.condition != "text":
        raise GenerateError(
            f"{directory}: a class-label model (classes {diffusion.classes}); loom generate "
            "takes text prompts"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            images = diffusion.generate(
                [prompt], count, guidance=guidance, sampler=sampling, seed=seed
            )
        except ValueError as err:  # too long under truncate: error; steps above the schedule's
            raise GenerateError(str(err)) from None
    grid = image_grid(images.permute(0, 2, 3, 1).numpy(), columns=min(count, GRID_COLUMNS))
    atomic.write_bytes(out, png_bytes(grid))
    return directory, [str(w.message) for w in caught]
