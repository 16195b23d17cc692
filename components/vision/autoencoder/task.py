"""The training engine's `Task` for both autoencoder kinds, with the optional PatchGAN.

Param groups: "autoencoder" (encoder, decoder, quantizer projections) and, with a
discriminator, "discriminator" (its own AdamW betas and LR scale, `start_step = disc_start`):
the engine's one loop updates both from one forward pass, and leaves the discriminator (and
its optimizer state) untouched before `disc_start`. `loss` returns {"autoencoder": ...,
"discriminator": ...}, each backpropagated into its own group only; the discriminator's loss
sees the reconstruction detached, the autoencoder's adversarial term goes through the
discriminator without updating it.

Batches are uint8 images [B, C, H, W] (a quarter of float32's bytes to move to the device),
turned into floats in [-1, 1] inside `loss`, on the device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from components.train.groups import ParamGroup
from components.vision.autoencoder.config import AutoencoderConfig
from components.vision.autoencoder.discriminator import PatchDiscriminator
from components.vision.autoencoder.loss import (
    adaptive_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
    reconstruction_loss,
)
from components.vision.autoencoder.model import KLOutput, build_network


def to_float(images: Tensor) -> Tensor:
    """uint8 [..] in [0, 255] -> float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: Tensor) -> Tensor:
    """float in [-1, 1] (clipped) -> uint8 [0, 255], rounded."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


class ImageTensors(Dataset):
    """uint8 images [N, C, H, W]; item i -> [C, H, W]."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


class AutoencoderWithCritic(nn.Module):
    """What the engine trains: the autoencoder network and, optionally, its discriminator.

    It has no forward of its own (`loss` calls the two networks), so `compile` compiles each
    of them in place: the engine's `compile` knob then reaches the modules that run."""

    def __init__(self, config: AutoencoderConfig, image_channels: int):
        super().__init__()
        self.autoencoder = build_network(
            config.kind, config.network, config.quantizer, image_channels
        )
        loss = config.loss
        self.discriminator = (
            PatchDiscriminator(image_channels, loss.disc_channels, loss.disc_layers)
            if loss.discriminator
            else None
        )

    def compile(self, *args, **kwargs) -> None:
        self.autoencoder.compile(*args, **kwargs)
        if self.discriminator is not None:
            self.discriminator.compile(*args, **kwargs)


class AutoencoderTask:
    def __init__(self, config: AutoencoderConfig, train: Tensor, val: Tensor | None):
        """train, val: uint8 images [N, C, H, W]."""
        self.config = config
        self.image_channels = int(train.shape[1])
        # typed as the engine's Task protocol declares them (mutable attributes: invariant)
        self.train_data: Dataset = ImageTensors(train)
        self.val_data: Dataset | None = ImageTensors(val) if val is not None and len(val) else None

    def model(self) -> AutoencoderWithCritic:
        return AutoencoderWithCritic(self.config, self.image_channels)

    def collate(self, samples: list[Tensor]) -> Tensor:
        return torch.stack(samples)  # uint8: converted on the device, in `loss`

    def param_groups(self, model: AutoencoderWithCritic) -> list[ParamGroup]:
        groups = [ParamGroup("autoencoder", model.autoencoder.parameters())]
        if model.discriminator is not None:
            loss = self.config.loss
            groups.append(
                ParamGroup(
                    "discriminator",
                    model.discriminator.parameters(),
                    lr_scale=loss.disc_lr_scale,
                    start_step=loss.disc_start,
                    betas=loss.disc_betas,
                )
            )
        return groups

    def loss(
        self, model: nn.Module, batch: Tensor, step: int = 0
    ) -> tuple[dict[str, Tensor], Mapping[str, float | Tensor]]:
        """batch: uint8 images [B, C, H, W] (`collate`), or floats already in [-1, 1];
        step: updates so far."""
        assert isinstance(model, AutoencoderWithCritic)
        cfg = self.config.loss
        images = to_float(batch) if batch.dtype == torch.uint8 else batch
        out = model.autoencoder(images)
        rec = reconstruction_loss(images, out.reconstruction, cfg.reconstruction)
        metrics: dict[str, float | Tensor] = {"rec": rec}
        if isinstance(out, KLOutput):
            kl = out.posterior.kl().mean()
            ae_loss = rec + self.config.loss.kl_weight * kl
            metrics["kl"] = kl
        else:
            ae_loss = rec + out.quantized.loss
            metrics |= {
                "commitment": out.quantized.loss,
                "perplexity": out.quantized.perplexity,
                "usage": out.quantized.usage,
            }
        losses = {"autoencoder": ae_loss}
        critic = model.discriminator
        if critic is not None and step >= cfg.disc_start:
            g_loss = hinge_generator_loss(critic(out.reconstruction))
            metrics["g"] = g_loss
            if torch.is_grad_enabled():  # validation runs without graphs: no adaptive weight
                last = model.autoencoder.decoder.last_layer
                weight = adaptive_weight(rec, g_loss, last, cfg.adaptive_max)
                losses["autoencoder"] = ae_loss + cfg.disc_weight * weight * g_loss
                metrics["adaptive_weight"] = weight
            real = critic(images)
            fake = critic(out.reconstruction.detach())
            losses["discriminator"] = hinge_discriminator_loss(real, fake)
            metrics |= {"logits_real": real.mean(), "logits_fake": fake.mean()}
        return losses, metrics
