"""What an autoencoder's progress looks like: reconstruction and prior-sample grids.

Both return uint8 RGB grids [H', W', 3] (`components.vision.grid.image_grid`), ready for
`StageLogger.log_image` or a PNG file. The model knows no I/O; these know no files.
"""

from __future__ import annotations

import torch
from torch import Tensor

from components.vision.autoencoder.model import KLAutoencoder, VQAutoencoder
from components.vision.autoencoder.task import to_float, to_uint8
from components.vision.grid import image_grid

GRID_COLUMNS = 8


def _hwc(images: Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> numpy-ready [N, H, W, C] on the CPU."""
    return images.permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def reconstruction_grid(network: KLAutoencoder | VQAutoencoder, images: Tensor):
    """images uint8 [N, C, H, W] -> a grid whose rows alternate GRID_COLUMNS originals and
    their reconstructions (posterior mean for kl, quantized codes for vq)."""
    device = next(network.parameters()).device
    x = to_float(images.to(device))
    y = to_uint8(network.decode(network.latents(x, sample=False)))
    pairs = []
    for start in range(0, images.shape[0], GRID_COLUMNS):
        pairs += [images[start : start + GRID_COLUMNS].cpu(), y[start : start + GRID_COLUMNS]]
    return image_grid(_hwc(torch.cat(pairs)).numpy(), columns=GRID_COLUMNS)


@torch.no_grad()
def prior_grid(
    network: KLAutoencoder,
    count: int,
    latent_shape: tuple[int, int, int],
    seed: int,
    std: float = 1.0,
):
    """`count` images decoded from latents drawn from N(0, std²) [count, c, h, w] (seeded):
    what unstructured latents decode to, before a diffusion model shapes them. `std`: the
    latents' own (1 / scale factor), so the draws are what a sampler's first noise decodes to
    rather than N(0, I), which a small KL weight leaves far from the posteriors."""
    device = next(network.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    z = std * torch.randn((count, *latent_shape), generator=generator).to(device)
    return image_grid(_hwc(to_uint8(network.decode(z))).numpy(), columns=GRID_COLUMNS)
