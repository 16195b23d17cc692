"""The one device picker of every component (`auto`: cuda > mps > cpu, or an explicit device
that must be there)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from components.config import ConfigError

Device = Literal["auto", "cpu", "cuda", "mps"]  # what a config's device field may say


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
