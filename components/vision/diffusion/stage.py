"""Stage "vision.train_diffusion": a text- (or label-) conditioned latent diffusion model on the
encoded latents of an autoencoder.

Inputs:
    latents       an encode_latents directory (`components.vision.autoencoder.latents`)
    autoencoder   the autoencoder that made them (decodes the live and final samples; copied
                  into the saved model)
    tokenizer     condition text: the text pipeline's BPE tokenizer directory
    word2vec      optional: a word2vec model on that tokenizer, whose vectors start the text
                  encoder's token embeddings (`word2vec_init: true`)
Output "model": the `DiffusionModel` directory (config.json, model.safetensors, tokenizer/,
autoencoder/) and samples.png (a row per preview prompt, guidance `preview.guidance`).

Live (through `io.log`): every engine report (train/val loss and MSE, LR, gradient norm) and
at every validation a sample grid of the preview prompts drawn with the EMA weights (when
`train.ema_decay` is set), from the same noise every time, so the grids show one picture
forming. Training resumes from `io.work` after a kill, exactly (the engine's checkpoints).

Inputs are checked before any training time is spent, each failure naming the file and key:
latents whose shape is not the autoencoder's, a latent side the UNet cannot halve enough, a
train split smaller than one batch, a tokenizer whose vocabulary is not `text.vocab_size`,
`word2vec_init` without a word2vec input (or on another tokenizer), a label condition on
data without labels, a `held_out` phrase no training caption holds.

`held_out` phrases ("yellow circle") drop every latent whose caption holds one, from train
and val: the saved model carries the list, and `evaluate_diffusion` asks it for those
combinations it never saw.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from components.stage import (
    Dataset,
    Output,
    ServedModel,
    Stage,
    StageInputError,
    StageIO,
    StageResult,
)
from components.text.bpe.tokenizer import BpeTokenizer
from components.train import distributed, train
from components.vision.autoencoder.latents import LatentSplit, read_latents
from components.vision.autoencoder.latents import read_meta as read_latents_meta
from components.vision.autoencoder.saved import Autoencoder
from components.vision.diffusion.config import DiffusionConfig
from components.vision.diffusion.saved import DiffusionModel
from components.vision.diffusion.task import Denoiser, DiffusionTask, LatentConditions
from components.vision.diffusion.text_encoder import (
    TextEncoderConfig,
    check_vocabulary,
    tokenize_prompts,
    word2vec_token_vectors,
)
from components.vision.grid import image_grid, png_bytes

SAMPLES_FILE = "samples.png"
PREVIEW_SEED = 0


def sample_grid(model: DiffusionModel, prompts: list, per_prompt: int, guidance: float, sampler):
    """uint8 grid [H, W, 3]: one row of `per_prompt` samples per prompt (seeds 0..)."""
    images = model.generate(
        prompts, per_prompt, guidance=guidance, sampler=sampler, seed=PREVIEW_SEED
    )
    return image_grid(images.permute(0, 2, 3, 1).numpy(), columns=per_prompt)


def holds_phrase(caption: str, phrase: str) -> bool:
    """`phrase` occurs in `caption` as whole words, case and spacing aside."""
    words, wanted = caption.lower().split(), phrase.lower().split()
    return any(words[i : i + len(wanted)] == wanted for i in range(len(words)))


def without_held_out(split: LatentSplit, phrases: list[str]) -> tuple[LatentSplit, list[int]]:
    """`split` less the rows whose caption holds one of `phrases`, and per phrase how many
    rows held it."""
    hits = [[holds_phrase(c, p) for c in split.captions] for p in phrases]
    keep = [i for i in range(len(split)) if not any(row[i] for row in hits)]
    kept = LatentSplit(
        split.latents[keep],
        split.ids[keep],
        [split.captions[i] for i in keep],
        [split.labels[i] for i in keep],
        [split.objects[i] for i in keep],
    )
    return kept, [sum(row) for row in hits]


def _hold_out(config: DiffusionConfig, split: LatentSplit, where: Path) -> LatentSplit:
    if not config.held_out:
        return split
    kept, counts = without_held_out(split, config.held_out)
    unmatched = [p for p, n in zip(config.held_out, counts, strict=True) if n == 0]
    if unmatched:
        raise StageInputError(
            f"{where}: held_out {unmatched} occur in no training caption (a typo? held-out "
            "phrases are caption words, e.g. 'yellow circle')"
        )
    return kept


def _labels(split: LatentSplit, where: Path) -> torch.Tensor:
    """Each row's class: its first label (a digit's; a shapes image's first object)."""
    if any(len(labels) == 0 for labels in split.labels):
        raise StageInputError(
            f"{where}: rows without labels: condition: label needs a class per image "
            "(use condition: text)"
        )
    return torch.as_tensor([labels[0] for labels in split.labels], dtype=torch.int64)


def _tokenizer(config: DiffusionConfig, io: StageIO) -> BpeTokenizer:
    if "tokenizer" not in io.inputs:
        raise StageInputError(
            "condition: text, but the stage has no tokenizer input (add the text pipeline's "
            "tokenizer to its meta.inputs and deps in dvc.yaml, or use condition: label)"
        )
    directory = io.inputs["tokenizer"]
    tokenizer = BpeTokenizer.load(directory)
    try:
        check_vocabulary(config.text, tokenizer)
    except ValueError as err:
        raise StageInputError(f"{directory}: text.vocab_size: {err}") from None
    return tokenizer


def _check(config: DiffusionConfig, io: StageIO, meta: dict, autoencoder: Autoencoder) -> None:
    source = io.inputs["latents"]
    shape = tuple(meta["latent_shape"])
    if shape != tuple(autoencoder.latent_shape):
        raise StageInputError(
            f"{source / 'meta.json'}: latent_shape {list(shape)}, but the autoencoder "
            f"{io.inputs['autoencoder']} makes {list(autoencoder.latent_shape)}: these latents "
            "are another autoencoder's"
        )
    f = config.unet.downsample
    if shape[1] % f or shape[2] % f:
        raise StageInputError(
            f"{source / 'meta.json'}: latent side {list(shape[1:])} does not divide by the "
            f"UNet's downsampling {f} (unet.channel_mult has {len(config.unet.channel_mult)} "
            "levels): use fewer levels or larger latents"
        )
    batch = config.train.batch_size
    if meta["counts"].get("train", 0) < batch:
        raise StageInputError(
            f"{source / 'train.safetensors'}: {meta['counts'].get('train', 0)} training latents, "
            f"fewer than one batch (train.batch_size = {batch})"
        )
    if config.word2vec_init and "word2vec" not in io.inputs:
        raise StageInputError(
            "word2vec_init: true, but the stage has no word2vec input (add it to the stage's "
            "meta.inputs and deps in dvc.yaml, or set word2vec_init: false)"
        )


def _run(config: DiffusionConfig, io: StageIO) -> StageResult:
    source = io.inputs["latents"]
    meta = read_latents_meta(source)
    autoencoder = Autoencoder.load(io.inputs["autoencoder"])
    _check(config, io, meta, autoencoder)
    train_split, val_split = read_latents(source, "train"), read_latents(source, "val")
    held_out_rows = len(train_split)
    train_split = _hold_out(config, train_split, source / "train.safetensors")
    held_out_rows -= len(train_split)
    val_split = without_held_out(val_split, config.held_out)[0]
    classes = [str(name) for name in meta.get("classes", [])]
    channels = int(meta["latent_shape"][0])
    tokenizer = _tokenizer(config, io) if config.condition == "text" else None
    text: TextEncoderConfig | None = None
    null = None
    if tokenizer is not None:
        text = replace(config.text, vocab_size=tokenizer.vocab_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captions are short; a long one truncates quietly
            prompts = {
                name: tokenize_prompts(tokenizer, s.captions, text.max_tokens, "warn")
                for name, s in (("train", train_split), ("val", val_split))
            }
        null = tokenize_prompts(tokenizer, [""], text.max_tokens)
        train_data = LatentConditions(train_split.latents, prompts["train"])
        val_data = LatentConditions(val_split.latents, prompts["val"])
        unet = config.unet_config(channels, None)
    else:
        unet = config.unet_config(channels, len(classes))
        train_data = LatentConditions(train_split.latents, labels=_labels(train_split, source))
        val_data = LatentConditions(val_split.latents, labels=_labels(val_split, source))

    vectors = _token_vectors(config, io, tokenizer)
    task = DiffusionTask(config, unet, text, train_data, val_data, null, vectors)
    preview = config.preview
    preview_prompts: list = list(preview.prompts) if tokenizer else list(preview.labels)

    def as_model(denoiser: torch.nn.Module) -> DiffusionModel:
        assert isinstance(denoiser, Denoiser)
        return DiffusionModel(
            denoiser, config.schedule, config.loss.prediction, tuple(meta["latent_shape"]),
            autoencoder.to(next(denoiser.parameters()).device), tokenizer, classes,
            config.held_out,
        )  # fmt: skip

    def on_eval(model: torch.nn.Module, step: int) -> dict[str, float]:
        if preview_prompts:
            grid = sample_grid(
                as_model(model), preview_prompts, preview.per_prompt, preview.guidance,
                preview.sampler,
            )  # fmt: skip
            io.log.log_image("samples", step, grid)
        return {}

    started = time.perf_counter()
    result = train(task, config.train, io.work, on_metrics=io.log.log_metrics, on_eval=on_eval)
    seconds = time.perf_counter() - started
    datasets = [
        Dataset("latents/train", source / "train.safetensors", "train", len(train_split)),
        Dataset("latents/val", source / "val.safetensors", "val", len(val_split)),
    ]
    if not distributed.detect().is_main:
        return StageResult(datasets=datasets)

    denoiser = result.ema if result.ema is not None else result.model
    model = as_model(denoiser.eval())
    out = io.outputs["model"]
    model.to("cpu").save(out)
    artifacts = []
    if preview_prompts:
        grid = sample_grid(
            model, preview_prompts, preview.per_prompt, preview.guidance, preview.sampler
        )
        (out / SAMPLES_FILE).write_bytes(png_bytes(grid))
        artifacts.append(Output("model", SAMPLES_FILE))
    trained = result.step - (result.resumed_from or 0)
    metrics = {
        key.removeprefix("val_ema/").replace("/", "_"): value
        for key, value in result.metrics.items()
        if key.startswith(("val/", "val_ema/"))
    }
    metrics |= {
        "parameters": float(sum(p.numel() for p in denoiser.parameters())),
        "steps": float(result.step),
        "held_out_latents": float(held_out_rows),
        "train_seconds": seconds,
        "train_latents_per_second": trained * config.train.batch_size / max(seconds, 1e-9),
    }
    datasets.append(Dataset("model", Output("model"), "output"))
    return StageResult(metrics=metrics, artifacts=artifacts, datasets=datasets)


def _token_vectors(
    config: DiffusionConfig, io: StageIO, tokenizer: BpeTokenizer | None
) -> tuple[torch.Tensor, list[int]] | None:
    """The word2vec input's token vectors and ids (`word2vec_init`), or None."""
    if not config.word2vec_init or tokenizer is None:
        return None
    from components.text.word2vec.vectors import Word2Vec

    directory = io.inputs["word2vec"]
    vectors = Word2Vec.load(directory)
    if vectors.tokenizer is None or vectors.tokenizer.merges != tokenizer.merges:
        raise StageInputError(
            f"{directory}: word2vec_init needs token vectors over the diffusion model's own "
            f"tokenizer {io.inputs['tokenizer']} (this word2vec model was trained on another)"
        )
    try:
        return word2vec_token_vectors(vectors)
    except ValueError as err:
        raise StageInputError(f"{directory}: {err}") from None


STAGE = Stage(
    name="vision.train_diffusion",
    version="1",
    config=DiffusionConfig,
    inputs=("latents", "autoencoder"),
    optional_inputs=("tokenizer", "word2vec"),
    outputs=("model",),
    run=_run,
    key_metrics=("loss", "mse"),
    distributed=True,
    models=(
        ServedModel(
            role="model",
            loader="components.vision.diffusion.serve:load",  # predict(prompts) -> images
            requirements=("numpy", "pyarrow", "safetensors", "torch", "tqdm"),
        ),
    ),
)
