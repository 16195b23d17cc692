"""Seeding, and capture/restore of every RNG a training step draws from.

States are plain tensors, ints and floats, so a checkpoint loads with `weights_only=True`:

    {"python": int64[625] (version 3 Mersenne Twister: 624 words + position),
     "python_gauss": float | None,
     "numpy": int64[624], "numpy_pos": int, "numpy_has_gauss": int, "numpy_gauss": float,
     "torch": uint8[...] (CPU generator), "cuda": [uint8[...] per visible GPU]}
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture() -> dict[str, Any]:
    version, words, gauss = random.getstate()
    assert version == 3, f"unexpected Python RNG state version {version}"
    # The legacy tuple (numpy's default, legacy=True); numpy's stubs type the call without
    # arguments as the legacy=False dict.
    MT19937State = tuple[str, np.ndarray, int, int, float]
    _, keys, pos, has_gauss, np_gauss = cast(MT19937State, np.random.get_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "python": torch.tensor(words, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore(state: dict[str, Any]) -> None:
    words = tuple(int(w) for w in state["python"].tolist())
    random.setstate((3, words, state["python_gauss"]))
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def isolated(seed: int) -> Iterator[None]:
    """Run the body with every generator seeded by `seed`, then put the previous states back.

    Validation runs inside it: its random draws (e.g. diffusion noise) repeat at every
    evaluation and leave the training stream exactly where it was.
    """
    state = capture()
    seed_all(seed)
    try:
        yield
    finally:
        restore(state)
