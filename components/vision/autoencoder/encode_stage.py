"""Stage "vision.encode_latents": an image data set through a trained autoencoder, to the
scaled latents (and captions, labels, boxes) a latent diffusion model trains on.

Inputs: "model" (an `Autoencoder` directory, from stage "vision.autoencoder") and "images"
(the data set it was trained on, or any of the same size and channels).
Output "latents": the `latents` format (train/val safetensors + Parquet rows + meta.json).

kind kl: `posterior: sample` stores one draw of each image's posterior (what LDM trains on),
its noise from a generator seeded by (seed, image id) alone, so the latents do not depend on
the runtime batch size or device; `mean` stores the mean; kind vq the quantized codes.
Metrics: per split the latents' mean and std (about 0 and 1: the scale factor is 1 / std of
the training latents).
"""

from __future__ import annotations

import time

import torch

from components.device import select_device
from components.stage import Dataset, Output, Stage, StageInputError, StageIO, StageResult
from components.vision.autoencoder.config import EncodeLatentsConfig
from components.vision.autoencoder.latents import write_latents, write_meta
from components.vision.autoencoder.saved import Autoencoder
from components.vision.autoencoder.task import to_float
from components.vision.data.store import SPLITS, read_images, read_meta


def posterior_noise(seed: int, ids, shape: tuple[int, int, int]) -> torch.Tensor:
    """Standard normal noise [len(ids), *shape], row i from a CPU generator seeded by
    (seed, ids[i]) alone."""
    rows = [
        torch.randn(shape, generator=torch.Generator().manual_seed(seed * 2**32 + int(i)))
        for i in ids
    ]
    return torch.stack(rows)


def _run(config: EncodeLatentsConfig, io: StageIO) -> StageResult:
    device = select_device(config.device, key="runtime.encode_latents.device")
    autoencoder = Autoencoder.load(io.inputs["model"], device=device)
    source = io.inputs["images"]
    meta = read_meta(source)
    expected = (autoencoder.image_size, autoencoder.image_channels)
    if (meta.size, meta.channels) != expected:
        raise StageInputError(
            f"{source / 'meta.json'}: images of side {meta.size} with {meta.channels} "
            f"channel(s), but the autoencoder in {io.inputs['model']} was trained on side "
            f"{expected[0]} with {expected[1]}"
        )
    out = io.outputs["latents"]
    sample = autoencoder.kind == "kl" and config.posterior == "sample"
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    started = time.perf_counter()
    for split in SPLITS:
        table = read_images(source / f"{split}.parquet")
        images = torch.from_numpy(table.images).permute(0, 3, 1, 2)
        parts = []
        for i in range(0, len(table), config.batch_size):
            ids = table.ids[i : i + config.batch_size]
            noise = posterior_noise(config.seed, ids, autoencoder.latent_shape) if sample else None
            x = to_float(images[i : i + config.batch_size].to(device))
            parts.append(autoencoder.encode(x, noise=noise).cpu())
        latents = torch.cat(parts) if parts else torch.zeros((0, *autoencoder.latent_shape))
        write_latents(out, split, latents, table)
        counts[split] = len(table)
        if len(table):
            metrics |= {
                f"{split}_latent_mean": float(latents.mean()),
                f"{split}_latent_std": float(latents.std()),
            }
    seconds = time.perf_counter() - started
    write_meta(
        out,
        {
            "kind": autoencoder.kind,
            "scale_factor": autoencoder.scale_factor,
            "latent_shape": list(autoencoder.latent_shape),
            "image_size": autoencoder.image_size,
            "image_channels": autoencoder.image_channels,
            "posterior": config.posterior if autoencoder.kind == "kl" else "codes",
            "classes": list(meta.classes),
            "source": meta.source,
            "counts": counts,
        },
    )
    metrics |= {
        "train_latents": float(counts["train"]),
        "val_latents": float(counts["val"]),
        "encode_images_per_second": sum(counts.values()) / max(seconds, 1e-9),
    }
    return StageResult(
        metrics=metrics,
        artifacts=[Output("latents", "meta.json")],
        datasets=[
            Dataset("model", io.inputs["model"], "input"),
            Dataset("images/train", source / "train.parquet", "train", counts["train"]),
            Dataset("images/val", source / "val.parquet", "val", counts["val"]),
            Dataset("latents", Output("latents"), "output"),
        ],
    )


STAGE = Stage(
    name="vision.encode_latents",
    version="1",
    config=EncodeLatentsConfig,
    inputs=("model", "images"),
    outputs=("latents",),
    run=_run,
    key_metrics=("train_latent_std",),
)
