"""Reconstruction quality of an autoencoder network on uint8 images: PSNR and SSIM
(torchmetrics, on [0, 1] images), L1, and KL (kind kl) or codebook usage and perplexity over
the whole set (kind vq: which of the K codes any image uses, not the mean per batch)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from components.vision.autoencoder.model import KLAutoencoder, VQAutoencoder
from components.vision.autoencoder.quantizer import code_statistics
from components.vision.autoencoder.task import to_float


@torch.no_grad()
def reconstruction_metrics(
    network: KLAutoencoder | VQAutoencoder, images: Tensor, batch_size: int = 256
) -> dict[str, float]:
    """images uint8 [N, C, H, W] -> {"psnr", "ssim", "l1", "kl" | "codebook_usage",
    "perplexity"}: PSNR/SSIM/L1 on [0, 1] pixels, averaged over images."""
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    sums = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0, "kl": 0.0}
    codes = []
    for start in range(0, images.shape[0], batch_size):
        x = to_float(images[start : start + batch_size].to(device))
        if isinstance(network, KLAutoencoder):
            posterior = network.posterior(x)
            y = network.decode(posterior.mean)
            sums["kl"] += float(posterior.kl().mean(dim=(1, 2, 3)).sum())
        else:
            quantized = network.quantize(x)
            y = network.decode(quantized.quantized)
            codes.append(quantized.codes.cpu())
        a, b = (x + 1) / 2, ((y + 1) / 2).clamp(0, 1)
        psnr = peak_signal_noise_ratio(b, a, data_range=1.0, reduction="none", dim=(1, 2, 3))
        sums["psnr"] += float(psnr.sum())
        ssim = structural_similarity_index_measure(b, a, data_range=1.0, reduction="none")
        sums["ssim"] += float(torch.as_tensor(ssim).sum())
        sums["l1"] += float((a - b).abs().mean(dim=(1, 2, 3)).sum())
    network.train(was_training)
    count = images.shape[0]
    metrics = {key: value / count for key, value in sums.items()}
    if isinstance(network, VQAutoencoder):
        del metrics["kl"]
        k = network.quantizer.config.codebook_size
        usage, perplexity = code_statistics(torch.cat(codes), k)
        metrics |= {"codebook_usage": usage, "perplexity": perplexity}
    return metrics


@torch.no_grad()
def latent_statistics(
    network: KLAutoencoder | VQAutoencoder, images: Tensor, seed: int = 0, batch_size: int = 256
) -> tuple[float, float]:
    """images uint8 [N, C, H, W] -> (mean, std) over every element of their latents: posterior
    draws for kl, as a diffusion model trained on samples sees them; codes for vq. In eval
    mode (a VQ codebook is not updated by measuring it), the noise drawn on the CPU from
    `seed`, so the figure is the same on every device. 1 / std is the latent scale factor
    (Stable Diffusion's 0.18215, here from the data)."""
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    generator = torch.Generator().manual_seed(seed)
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, images.shape[0], batch_size):
        x = to_float(images[start : start + batch_size].to(device))
        if isinstance(network, KLAutoencoder):
            posterior = network.posterior(x)
            noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
            z = (posterior.mean + posterior.std * noise).double()
        else:
            z = network.latents(x).double()
        total += float(z.sum())
        total_sq += float(z.square().sum())
        count += z.numel()
    network.train(was_training)
    mean = total / count
    return mean, max(total_sq / count - mean * mean, 0.0) ** 0.5
