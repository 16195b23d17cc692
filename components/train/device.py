"""Device selection (`auto`: cuda > mps > cpu) and what goes with the device: autocast
precision, `torch.compile` and the channels-last memory format."""

from __future__ import annotations

from collections.abc import Callable

import torch

from components.config import ConfigError


def select_device(
    name: str = "auto",
    local_rank: int = 0,
    key: str = "device",
    auto: tuple[str, ...] = ("cuda", "mps"),
) -> torch.device:
    """The torch device for config value `name` (the one device picker of every component);
    under DDP on CUDA, the rank's own GPU. `auto` takes the first available of `auto`, else
    the CPU; a device that is not there is a `ConfigError` naming `key`.

    >>> select_device("cpu")
    device(type='cpu')
    """
    available: dict[str, Callable[[], bool]] = {
        "cuda": torch.cuda.is_available,
        "mps": torch.backends.mps.is_available,
    }
    if name == "auto":
        name = next((d for d in auto if available[d]()), "cpu")
    if name in available:
        if not available[name]():
            upper = name.upper()
            raise ConfigError(key, name, f"an available device ({upper} is not available)")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(key, name, "one of auto|cpu|cuda|mps")


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
