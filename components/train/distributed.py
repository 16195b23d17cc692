"""Data-parallel runs under `torchrun`: detection, process group set-up and rank helpers.

`torchrun` sets WORLD_SIZE, RANK and LOCAL_RANK; without them a run is one process and every
helper here is a no-op. The backend is NCCL on CUDA and gloo otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    """This process's place in the job, from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)


def init(env: DistEnv, device: torch.device) -> bool:
    """Join the process group (env:// rendezvous); True if this call created it."""
    if not env.enabled or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", rank=env.rank, world_size=env.world_size
    )
    return True


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks, in place (a no-op on one process)."""
    if env.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(obj: Any, env: DistEnv) -> list[Any]:
    """`obj` from every rank, in rank order."""
    if not env.enabled:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


@torch.no_grad()
def broadcast_(tensors: list[torch.Tensor], env: DistEnv) -> None:
    """Overwrite `tensors` with rank 0's, in place (a no-op on one process)."""
    if env.enabled:
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


@torch.no_grad()
def average_gradients(params: list[torch.Tensor], env: DistEnv) -> None:
    """Each parameter's gradient averaged over ranks, in place, as DDP's all-reduce does.

    A gradient missing on some ranks counts as zero there; a parameter keeps `grad = None` only
    if it has no gradient on any rank. One all-reduce per dtype (plus one of presence flags).
    """
    if not env.enabled or not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(present, op=dist.ReduceOp.SUM)
    for p, count in zip(params, present.tolist(), strict=True):
        if count and p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= env.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
