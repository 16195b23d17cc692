"""A tiny diffusion model with random (not zero) weights, for tests of what uses one: its
images mean nothing, its shapes, seeding and refusals are real."""

from __future__ import annotations

import torch

from components.config import build
from components.text.bpe.tokenizer import BpeTokenizer
from components.vision.autoencoder.config import NetworkConfig, QuantizerConfig
from components.vision.autoencoder.model import build_network
from components.vision.autoencoder.saved import Autoencoder
from components.vision.diffusion.config import DiffusionConfig
from components.vision.diffusion.saved import DiffusionModel
from components.vision.diffusion.task import Denoiser


def tiny_model(condition: str = "text", truncate: str = "warn") -> DiffusionModel:
    torch.manual_seed(0)
    config = build(
        DiffusionConfig,
        {"condition": condition,
         "unet": {"base_channels": 16, "groups": 8, "blocks_per_level": 1, "attention_levels": [1],
                  "heads": 2},
         "text": {"dim": 16, "depth": 1, "heads": 2, "max_tokens": 16, "vocab_size": 256,
                  "truncate": truncate}},
    )  # fmt: skip
    text = config.text if condition == "text" else None
    denoiser = Denoiser(config.unet_config(4, None if text else 3), text)
    for p in denoiser.unet.parameters():  # zero-initialised outputs would draw plain noise
        p.data.add_(0.01 * torch.randn_like(p))
    network = build_network(
        "kl", build(NetworkConfig, {"channels": 8, "max_channels": 8, "norm_groups": 4}),
        QuantizerConfig(), 1,
    )  # fmt: skip
    tokenizer = BpeTokenizer({i: bytes([i]) for i in range(256)}, []) if text else None
    return DiffusionModel(
        denoiser, config.schedule, "eps", (4, 8, 8), Autoencoder(network, 32), tokenizer,
        ["a", "b", "c"],
    )  # fmt: skip
