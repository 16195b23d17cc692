"""What goes with the device in training: autocast precision, `torch.compile` and the
channels-last memory format. The device picker itself is `components.device.select_device`
(re-exported here), outside this package so that a component that is not an engine trainer
(word2vec) picks its device without depending on the engine."""

from __future__ import annotations

import torch

from components.config import ConfigError
from components.device import select_device

__all__ = ["autocast_dtype", "select_device", "use_channels_last", "use_compile"]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for `bf16`, and for `auto` on CUDA; None (no autocast, fp32) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if precision in ("auto", "fp32"):
        return None
    raise ConfigError("precision", precision, "one of auto|fp32|bf16")


def use_compile(switch: str, device: torch.device) -> bool:
    """Whether to `torch.compile` the model: `always`, or `auto` on CUDA (never on CPU/MPS)."""
    if switch not in ("auto", "always", "never"):
        raise ConfigError("compile", switch, "one of auto|always|never")
    return switch == "always" or (switch == "auto" and device.type == "cuda")


def use_channels_last(switch: str, device: torch.device, model: torch.nn.Module) -> bool:
    """Whether to store 4-D weights channels-last: `always`, or `auto` on CUDA when the model
    has any (conv kernels, where cuDNN runs faster in NHWC)."""
    if switch not in ("auto", "always", "never"):
        raise ConfigError("channels_last", switch, "one of auto|always|never")
    if switch != "auto":
        return switch == "always"
    return device.type == "cuda" and any(p.ndim == 4 for p in model.parameters())
