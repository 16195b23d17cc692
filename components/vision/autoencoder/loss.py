"""The autoencoders' objectives, as functions of tensors (no model state).

    autoencoder loss = rec + kl_weight · KL                          (kind kl)
                     = rec + commitment                              (kind vq)
                     + [step >= disc_start] · disc_weight · λ · g    (with a discriminator)
    rec = mean |x − x̂| (l1) or mean (x − x̂)² (l2)
    g   = −mean D(x̂)                                                (hinge generator loss)
    λ   = ‖∇_L rec‖ / (‖∇_L g‖ + 1e-4), clamped to [0, adaptive_max]  (adaptive weight)
    discriminator loss = ½ (mean relu(1 − D(x)) + mean relu(1 + D(sg(x̂))))   (hinge)

L is the decoder's last layer: the adaptive weight (Esser et al. 2021, taming; LDM) scales the
adversarial gradient to the size of the reconstruction gradient where both enter the
decoder, so neither drowns the other whatever their raw scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reconstruction_loss(images: Tensor, reconstruction: Tensor, kind: str) -> Tensor:
    """Per-pixel mean L1 or L2 between [B, C, H, W] tensors."""
    if kind == "l1":
        return (images - reconstruction).abs().mean()
    if kind == "l2":
        return (images - reconstruction).pow(2).mean()
    raise ValueError(f"reconstruction = {kind!r}: expected l1|l2")


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, maximum: float) -> Tensor:
    """λ = ‖∇_L rec‖ / (‖∇_L g‖ + 1e-4), clamped to [0, maximum], as a constant (detached).
    Both losses must still have their graphs (it differentiates them, keeping the graphs)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, maximum).detach()
