"""Stage "vision.autoencoder": train a KL-VAE or VQ-VAE (optionally against a PatchGAN) on an
image data set of the store format (`components.vision.data.store`).

Input "images": a data set directory (train.parquet, val.parquet, meta.json).
Output "model": the `Autoencoder` save directory (config.json with the latent scale factor,
model.safetensors), plus reconstructions.png (val images over their reconstructions) and, for
kind kl, prior_samples.png (decoded from N(0, 1/scale²) latents).

Live (through `io.log`, so in MLflow while it trains): every engine report (train/val loss
per term, the discriminator's logits, LR, gradient norms) and at every validation the
reconstruction grid, the prior grid (kl) and PSNR/SSIM/L1/KL or codebook usage/perplexity on
`eval.metric_images` val images ("eval/..."). Final metrics are on the whole val set.

Training resumes from the runner's work directory (`io.work`) after a kill, exactly (the
engine's checkpoints). Under torchrun every rank trains; rank 0 writes the model.
Inputs are checked before any training time is spent: an image side that is not a multiple
of `network.downsample`, a train set smaller than one batch or an empty val set is a
`StageInputError` naming the file and the key.
"""

from __future__ import annotations

import math
import time
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
from components.train import distributed, train
from components.vision.autoencoder.config import AutoencoderConfig
from components.vision.autoencoder.evaluate import latent_statistics, reconstruction_metrics
from components.vision.autoencoder.model import KLAutoencoder, VQAutoencoder
from components.vision.autoencoder.previews import prior_grid, reconstruction_grid
from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import AutoencoderTask
from components.vision.data.store import ImagesMeta, read_images, read_meta
from components.vision.grid import png_bytes

MIN_LATENT_STD = 1e-6
RECONSTRUCTIONS_FILE = "reconstructions.png"
PRIOR_FILE = "prior_samples.png"
PREVIEW_SEED = 0  # the prior grid's draws: the same latents at every validation
SUBSET_SEED = 0  # which images the grids, eval metrics and scale factor use


def subset(images: torch.Tensor, count: int) -> torch.Tensor:
    """`count` of `images` [N, ...] picked by a fixed seed, in their stored order: not the
    first rows, which for a folder source (sorted by path) would be one class folder."""
    if count >= images.shape[0]:
        return images
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    picks = torch.randperm(images.shape[0], generator=generator)[:count].sort().values
    return images[picks]


def load_split(directory: Path, split: str) -> torch.Tensor:
    """uint8 images [N, C, H, W] of `directory/<split>.parquet`."""
    table = read_images(directory / f"{split}.parquet")
    return torch.from_numpy(table.images).permute(0, 3, 1, 2).contiguous()


def check_inputs(config: AutoencoderConfig, directory: Path, meta: ImagesMeta) -> None:
    """What the data must satisfy for this config, each failure naming the file and key."""
    f = config.network.downsample
    if meta.size % f:
        raise StageInputError(
            f"{directory / 'meta.json'}: images of side {meta.size} do not divide by "
            f"network.downsample = {f}; use a side that is a multiple of {f}, or a smaller factor"
        )
    batch = config.train.batch_size
    if meta.counts.get("train", 0) < batch:
        raise StageInputError(
            f"{directory / 'train.parquet'}: {meta.counts.get('train', 0)} training images, "
            f"fewer than one batch (train.batch_size = {batch})"
        )
    if meta.counts.get("val", 0) == 0:
        raise StageInputError(
            f"{directory / 'val.parquet'}: no validation images (raise the images stage's "
            "val_fraction): reconstruction quality is measured on val"
        )


def _network(model: torch.nn.Module) -> KLAutoencoder | VQAutoencoder:
    return model.autoencoder  # type: ignore[return-value]  # AutoencoderWithCritic


def _run(config: AutoencoderConfig, io: StageIO) -> StageResult:
    source = io.inputs["images"]
    meta = read_meta(source)
    check_inputs(config, source, meta)
    train_images, val_images = load_split(source, "train"), load_split(source, "val")
    evaluation = config.eval
    grid_images = subset(val_images, evaluation.grid_images)
    metric_images = subset(val_images, evaluation.metric_images)
    side = meta.size // config.network.downsample
    latent_shape = (config.network.latent_channels, side, side)

    def on_eval(model: torch.nn.Module, step: int) -> dict[str, float]:
        network = _network(model)
        io.log.log_image("reconstructions", step, reconstruction_grid(network, grid_images))
        if isinstance(network, KLAutoencoder):
            _, std = latent_statistics(network, metric_images, seed=PREVIEW_SEED)
            grid = prior_grid(network, evaluation.prior_samples, latent_shape, PREVIEW_SEED, std)
            io.log.log_image("prior_samples", step, grid)
        return reconstruction_metrics(network, metric_images)

    task = AutoencoderTask(config, train_images, val_images)
    started = time.perf_counter()
    result = train(task, config.train, io.work, on_metrics=io.log.log_metrics, on_eval=on_eval)
    seconds = time.perf_counter() - started
    datasets = [
        Dataset("images/train", source / "train.parquet", "train", len(train_images)),
        Dataset("images/val", source / "val.parquet", "val", len(val_images)),
    ]
    if not distributed.detect().is_main:
        return StageResult(datasets=datasets)

    network = _network(result.ema if result.ema is not None else result.model).eval()
    mean, std = latent_statistics(network, subset(train_images, evaluation.scale_images))
    if not math.isfinite(std) or std < MIN_LATENT_STD:
        raise ValueError(
            f"{config.kind} autoencoder: training latents have std {std} (latent_std): the "
            "training diverged or the latents collapsed; no scale factor 1 / std to store"
        )
    autoencoder = Autoencoder(network, meta.size, 1.0 / std)
    out = io.outputs["model"]
    autoencoder.save(out)
    artifacts = [Output("model", RECONSTRUCTIONS_FILE)]
    (out / RECONSTRUCTIONS_FILE).write_bytes(png_bytes(reconstruction_grid(network, grid_images)))
    if isinstance(network, KLAutoencoder):
        grid = prior_grid(network, evaluation.prior_samples, latent_shape, PREVIEW_SEED, std)
        (out / PRIOR_FILE).write_bytes(png_bytes(grid))
        artifacts.append(Output("model", PRIOR_FILE))

    metrics = reconstruction_metrics(network, val_images)
    trained = result.step - (result.resumed_from or 0)
    metrics |= {
        "scale_factor": autoencoder.scale_factor,
        "latent_mean": mean,
        "latent_std": std,
        "parameters": float(sum(p.numel() for p in network.parameters())),
        "steps": float(result.step),
        "train_seconds": seconds,
        "train_images_per_second": trained * config.train.batch_size / max(seconds, 1e-9),
    }
    datasets.append(Dataset("model", Output("model"), "output"))
    return StageResult(metrics=metrics, artifacts=artifacts, datasets=datasets)


STAGE = Stage(
    name="vision.autoencoder",
    version="1",
    config=AutoencoderConfig,
    inputs=("images",),
    outputs=("model",),
    run=_run,
    key_metrics=("psnr", "ssim", "codebook_usage"),
    distributed=True,
    models=(
        ServedModel(
            role="model",
            loader="components.vision.autoencoder.serve:load",  # predict(images) -> latents
            requirements=("numpy", "pyarrow", "safetensors", "torch", "tqdm"),
        ),
    ),
)
