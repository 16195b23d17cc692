"""Classifier-free guidance (Ho & Salimans 2022).

Training replaces each sample's condition by the null one with probability p
(`drop_condition`); sampling mixes the conditional and unconditional predictions,

    out = u + s · (c - u)      u = f(x, t, null), c = f(x, t, condition), s = the guidance

in one batched network call on [x, x] with [null, condition] (`batch_conditions`). s = 1 is
the conditional model alone and s = 0 the unconditional one, each in one call without the
batch doubled; s > 1 trades diversity for fidelity to the prompt.

A condition is any nest of tensors batched along dim 0: a Tensor ([B, L, D] text context,
int64 [B] labels), None (no such input), a tuple or list of these, or a dataclass whose fields
are these (such as `task.Condition(context, mask, labels)`). The condition and the null one
must have the same structure: a padding mask on one side and None on the other is an error,
not a silently dropped mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

C = TypeVar("C")


def batch_conditions(first: C, second: C) -> C:
    """[first; second] along dim 0, field by field (see the module docstring).

    >>> batch_conditions((torch.zeros(1, 2), None), (torch.ones(1, 2), None))
    (tensor([[0., 0.],
            [1., 1.]]), None)
    """
    return _cat(first, second, "condition")


def _cat(first: Any, second: Any, where: str) -> Any:
    if first is None or second is None:
        if first is not None or second is not None:
            raise ValueError(f"{where}: None on one side only (both must have the same parts)")
        return None
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return torch.cat([first, second])
    if isinstance(first, (tuple, list)) and type(first) is type(second):
        if len(first) != len(second):
            raise ValueError(f"{where}: {len(first)} parts on one side, {len(second)} on the other")
        pairs = enumerate(zip(first, second, strict=True))
        parts = [_cat(a, b, f"{where}[{i}]") for i, (a, b) in pairs]
        return type(first)(parts)
    is_dataclass = dataclasses.is_dataclass(first) and not isinstance(first, type)
    if is_dataclass and type(first) is type(second):
        changes = {
            f.name: _cat(getattr(first, f.name), getattr(second, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(first)
            if f.init
        }
        return dataclasses.replace(first, **changes)
    raise TypeError(
        f"{where}: cannot batch {type(second).__name__} with {type(first).__name__} (expected "
        "tensors, None, or tuples, lists or dataclasses of them, the same on both sides)"
    )


def guided_denoiser(
    network: Callable[[Tensor, Tensor, C], Tensor], condition: C, null: C, guidance: float
) -> Callable[[Tensor, Tensor], Tensor]:
    """The denoise callable a sampler takes, (x_t [B, ...], t int64 [B]) -> output [B, ...],
    from network(x, t, condition) and a condition and a null condition of batch B each.

    The mix is of the network's raw outputs (ε, v or x0 alike: each is linear in the others
    at fixed x_t and t, so guiding any of them gives the same x̂0)."""
    if not guidance >= 0:  # also refuses NaN
        raise ValueError(f"guidance = {guidance}: expected a float >= 0")
    if guidance == 1.0:
        return lambda x, t: network(x, t, condition)
    if guidance == 0.0:
        return lambda x, t: network(x, t, null)
    both = batch_conditions(null, condition)  # built once, not at every step

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        unconditional, conditional = network(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    return denoise


def drop_condition(
    batch_size: int,
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """bool [B] on `device`: True = train this sample on the null condition (probability p
    each). The draw is made on the generator's device (a CPU generator can serve a GPU
    batch), on `device` with the global RNG when there is none."""
    if not 0 <= p <= 1:
        raise ValueError(f"p = {p}: expected a probability in [0, 1]")
    where = device if generator is None else generator.device
    return (torch.rand(batch_size, generator=generator, device=where) < p).to(device)
