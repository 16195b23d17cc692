"""The trained autoencoder as an object: network + latent scale factor + save format.

    ae = Autoencoder.load("data/autoencoders/kl_digits")
    z = ae.encode(images)        # images float [B, C, H, W] in [-1, 1] -> scaled latents
    x = ae.decode(z)             # scaled latents -> images in [-1, 1]
    ae.save(out)

Scaled latents are the network's latents times `scale_factor` = 1 / std of the training
latents (Stable Diffusion's 0.18215, computed here from the data): unit variance, the input a
latent diffusion model's noise schedule assumes. `decode` divides it out again.

On disk (`components.artifact`, format "loom-autoencoder" version 1): config.json {"kind",
"network", "quantizer", "image_channels", "image_size", "scale_factor", "latent_shape"} and
model.safetensors (the network's state dict; the discriminator is training-only and not kept).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from components import artifact
from components.config import build, identity
from components.stage import StageInputError
from components.vision.autoencoder.config import NetworkConfig, QuantizerConfig
from components.vision.autoencoder.model import KLAutoencoder, VQAutoencoder, build_network

KIND, VERSION = "autoencoder", 1


class Autoencoder:
    def __init__(
        self,
        network: KLAutoencoder | VQAutoencoder,
        image_size: int,
        scale_factor: float = 1.0,
    ):
        self.network = network.eval()
        self.image_size = image_size
        self.scale_factor = float(scale_factor)

    @property
    def kind(self) -> str:
        return self.network.kind

    @property
    def image_channels(self) -> int:
        return int(self.network.decoder.conv_out.out_channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of one image's latents."""
        config: NetworkConfig = self.network.encoder.config
        side = self.image_size // config.downsample
        return (config.latent_channels, side, side)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> Autoencoder:
        self.network.to(device)
        return self

    @torch.no_grad()
    def encode(
        self,
        images: Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """images float [B, C, H, W] in [-1, 1] -> scaled latents [B, c, H/f, W/f]: the
        posterior mean (or a draw, `sample`, with `generator`; or mean + σ · `noise`, a
        standard normal [B, c, h, w] drawn by the caller) for kl, the quantized codes for vq."""
        self._check_images(images)
        network = self.network
        if noise is not None and isinstance(network, KLAutoencoder):
            posterior = network.posterior(images)
            z = posterior.mean + posterior.std * noise.to(posterior.mean)
        else:
            z = network.latents(images, sample, generator)
        return z * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents [B, c, h, w] -> images float [B, C, h·f, w·f] (about [-1, 1])."""
        if latents.ndim != 4 or tuple(latents.shape[1:2]) != self.latent_shape[:1]:
            raise ValueError(
                f"latents of shape {tuple(latents.shape)}: expected [B, {self.latent_shape[0]}, "
                "h, w]"
            )
        return self.network.decode(latents / self.scale_factor)

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise ValueError(
                f"images of shape {tuple(images.shape)}: expected [B, {self.image_channels}, H, W]"
            )
        if not images.is_floating_point():
            raise ValueError(f"images of dtype {images.dtype}: expected floats in [-1, 1]")
        f = self.network.encoder.config.downsample
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(
                f"images of side {tuple(images.shape[2:])}: expected multiples of the "
                f"downsampling factor {f}"
            )

    def save(self, directory: str | Path) -> Path:
        net = self.network
        quantizer = net.quantizer.config if isinstance(net, VQAutoencoder) else QuantizerConfig()
        fields = {
            "kind": self.kind,
            "network": identity(net.encoder.config),
            "quantizer": identity(quantizer),
            "image_channels": self.image_channels,
            "image_size": self.image_size,
            "scale_factor": self.scale_factor,
            "latent_shape": list(self.latent_shape),
        }
        return artifact.save(directory, KIND, VERSION, fields, artifact.module_state(net))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
        fields = artifact.read_config(directory, KIND, VERSION)
        where = str(Path(directory) / artifact.CONFIG_FILE)
        try:
            network_config = build(NetworkConfig, fields["network"], f"{where}: network")
            quantizer = build(QuantizerConfig, fields["quantizer"], f"{where}: quantizer")
            network = build_network(
                fields["kind"], network_config, quantizer, int(fields["image_channels"])
            )
            image_size, scale = int(fields["image_size"]), float(fields["scale_factor"])
        except (KeyError, TypeError, ValueError) as err:
            raise StageInputError(f"{where}: not a valid autoencoder config: {err}") from None
        artifact.load_module(directory, network)
        return cls(network, image_size, scale).to(device)
