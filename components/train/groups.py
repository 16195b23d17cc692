"""Named parameter groups: which parameters train together, and with which AdamW settings.

A task without `param_groups` trains one group, "model", of every trainable parameter. A task
may instead declare groups that hold every trainable parameter exactly once, each with its own
`lr_scale` (a DETR backbone at 0.1), `weight_decay`, `betas` and `start_step` (a GAN
discriminator that starts at update k: before it, its weights and optimizer state are left
untouched). Example, a KL-VAE against a PatchGAN discriminator from update 50_000:

    [ParamGroup("autoencoder", model.vae.parameters()),
     ParamGroup("discriminator", model.disc.parameters(), start_step=50_000, betas=(0.5, 0.9))]

All groups live in one AdamW, two param groups each (weight decay on matrices and kernels
only, as for the default group): the same as one AdamW per group, since AdamW updates every
parameter from its own state and its group's settings, and skips a parameter without a
gradient (how a group that has not started, or has no loss at a step, stays as it is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from components.config import require
from components.train.config import TrainConfig, is_number

DEFAULT = "model"  # the one group of a task without `param_groups`


@dataclass(eq=False)
class ParamGroup:
    """Parameters trained together, with their own optimizer settings."""

    name: str
    params: Iterable[nn.Parameter]
    lr_scale: float = 1.0  # times the scheduled rate (0.1: a pretrained backbone)
    start_step: int = 0  # updates 0 .. start_step - 1 leave the group untouched
    weight_decay: float | None = None  # None: the config's (on ndim >= 2 weights only)
    betas: tuple[float, float] | None = None  # None: the config's

    def __post_init__(self) -> None:
        self.params = list(self.params)
        name = self.name
        ok = isinstance(name, str) and name != ""
        require(ok, "param_groups.name", name, "a non-empty str")
        key = f"param_groups.{name}"
        scale = self.lr_scale
        require(is_number(scale) and scale > 0, f"{key}.lr_scale", scale, "a float > 0")
        start = self.start_step
        ok = isinstance(start, int) and not isinstance(start, bool) and start >= 0
        require(ok, f"{key}.start_step", start, "an int >= 0")
        decay = self.weight_decay
        ok = decay is None or (is_number(decay) and decay >= 0)
        require(ok, f"{key}.weight_decay", decay, "None or a float >= 0")
        betas = self.betas
        ok = betas is None or (
            isinstance(betas, (tuple, list))
            and len(betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in betas)
        )
        require(ok, f"{key}.betas", betas, "None or two floats in [0, 1)")


def default_groups(model: nn.Module) -> list[ParamGroup]:
    return [ParamGroup(DEFAULT, [p for p in model.parameters() if p.requires_grad])]


def check_groups(groups: Sequence[ParamGroup], model: nn.Module) -> list[ParamGroup]:
    """`groups`, checked to hold every trainable parameter of `model` exactly once; frozen
    parameters listed in a group are left out of it. `ValueError` saying what is wrong."""
    groups = list(groups)
    if not groups or not all(isinstance(g, ParamGroup) for g in groups):
        raise ValueError(f"param_groups: expected a non-empty list of ParamGroup, got {groups!r}")
    names = [g.name for g in groups]
    if len(set(names)) < len(names):
        raise ValueError(f"param_groups: names {names} repeat")
    param_names = {id(p): name for name, p in model.named_parameters()}
    owner: dict[int, str] = {}
    for group in groups:
        for p in group.params:
            if id(p) not in param_names:
                raise ValueError(
                    f"param_groups: group {group.name!r} holds a tensor that is not a "
                    "parameter of the model"
                )
            if id(p) in owner:
                raise ValueError(
                    f"param_groups: {param_names[id(p)]} is in group {owner[id(p)]!r} "
                    f"and in {group.name!r}"
                )
            owner[id(p)] = group.name
    left_out = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
    if left_out:
        raise ValueError(
            f"param_groups: trainable parameters in no group: {left_out[:5]} "
            "(add them to a group, or set requires_grad=False)"
        )
    return [dataclasses.replace(g, params=[p for p in g.params if p.requires_grad]) for g in groups]


def adamw(groups: Sequence[ParamGroup], config: TrainConfig) -> torch.optim.AdamW:
    """One AdamW, two param groups per `ParamGroup` (in order: its matrices and kernels with
    weight decay, then the rest without), each carrying the group's `lr_scale`."""
    param_groups = []
    for group in groups:
        decay = config.weight_decay if group.weight_decay is None else group.weight_decay
        betas = tuple(config.betas if group.betas is None else group.betas)
        own = {"lr_scale": group.lr_scale, "betas": betas}
        param_groups += [
            {"params": [p for p in group.params if p.ndim >= 2], "weight_decay": decay, **own},
            {"params": [p for p in group.params if p.ndim < 2], "weight_decay": 0.0, **own},
        ]
    # Both halves always exist, so optimizer states line up with any checkpoint of the model.
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas)


def parameters(groups: Iterable[ParamGroup]) -> list[nn.Parameter]:
    return [p for group in groups for p in group.params]
