"""The one training loop for every torch trainer in Loom.

A trainer supplies a `Task` (model factory, loss, datasets) and a `TrainConfig`; `train` does
the rest, the same way for every model:

    seed -> model, AdamW, LR schedule -> resume from the newest checkpoint, if any -> DDP wrap
    -> EMA -> per step: grad_accum micro-batches (bf16 autocast where configured), clip,
       update, EMA update -> every N steps: train metrics, validation, checkpoint

Resume: when `checkpoint_dir` holds a checkpoint, `train` continues from the newest one:
weights, optimizer, schedule, EMA, every RNG (per rank) and the data position, so the rest of
the run sees the same batches and random draws as an uninterrupted run. (Random draws inside
`Dataset.__getitem__` are exact with `num_workers: 0`; worker processes are seeded per epoch,
so theirs are not reproduced after a mid-epoch resume.) A checkpoint is also written at the
last step, so calling `train` again on a finished run returns at once. Each checkpoint also
holds every metrics report so far, which a resumed run first replays through `on_metrics` (and
into `TrainResult.metrics`): the caller sees the calls of an uninterrupted run. A checkpoint
that does not fit (parameter names or shapes, batch_size, dataset size, EMA) raises
`CheckpointError` naming the file.

Validation runs under a fixed seed (`rng.isolated`): its random draws (diffusion noise, say)
repeat at every evaluation and leave the training stream untouched.

DDP: under `torchrun` each rank takes its slice of every micro-batch (`data.BatchPlan`) and
DDP averages gradients, so W ranks train like one process with the same `batch_size`. Only
rank 0 shows progress, calls `on_metrics` and writes checkpoints. `on_metrics` runs after the
step's checkpoint, so a step it reports survives a crash in the callback. `Task.loss` must run
the model by calling it (`model(x)`): DDP synchronizes gradients through `forward` only.

Metrics passed to `on_metrics(step, metrics)` (means over the steps since the last report and
over ranks): "train/loss", "train/<task metric>", "train/lr", "train/grad_norm" (before
clipping); at validations "val/loss", "val/<task metric>" and, with EMA, "val_ema/...".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from components.config import to_dict
from components.train import checkpoint, distributed, rng
from components.train.config import TrainConfig
from components.train.data import Batches, BatchPlan, Position
from components.train.device import autocast_dtype, select_device
from components.train.ema import Ema
from components.train.schedule import LrSchedule

log = logging.getLogger(__name__)

MetricsFn = Callable[[int, dict[str, float]], None]


class Task(Protocol):
    """What a trainer supplies. Optional attributes: `val_data: Dataset | None` (validation
    set) and `collate(samples) -> batch` (default: torch's `default_collate`)."""

    train_data: Dataset  # map-style

    def model(self) -> nn.Module:
        """A freshly initialized model (called once per run, after seeding)."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        """Scalar mean loss of `batch` (on the run's device) and extra metrics to log."""
        ...


@dataclass
class TrainResult:
    model: nn.Module  # trained weights, on the run's device
    ema: nn.Module | None  # the EMA copy, when `ema_decay` is set
    step: int
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric
    resumed_from: int | None = None  # step of the checkpoint this run started from


def train(
    task: Task,
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsFn | None = None,
) -> TrainResult:
    """Train `task` for `config.steps` optimizer steps, resuming from `checkpoint_dir`."""
    env = distributed.detect()
    device = select_device(config.device, env.local_rank)
    created = distributed.init(env, device)
    try:
        return _Run(task, config, env, device, checkpoint_dir, on_metrics).run()
    finally:
        distributed.teardown(created)


class _Run:
    def __init__(
        self,
        task: Task,
        config: TrainConfig,
        env: distributed.DistEnv,
        device: torch.device,
        checkpoint_dir: Path | None,
        on_metrics: MetricsFn | None,
    ):
        self.task, self.config, self.env, self.device = task, config, env, device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.on_metrics = on_metrics
        self.dtype = autocast_dtype(config.precision, device)
        self.collate = getattr(task, "collate", None)
        # Per-rank streams (dropout differs across ranks); DDP broadcasts rank 0's init.
        rng.seed_all(config.seed + env.rank)
        self.model = task.model().to(device)
        self.optimizer = _adamw(self.model, config)
        self.schedule = LrSchedule(self.optimizer, config)
        plan = BatchPlan(
            len(task.train_data),
            config.batch_size,
            config.grad_accum,
            env.world_size,
            env.rank,
            config.seed,
            config.shuffle,
        )
        self.batches = Batches(
            task.train_data, plan, self.collate, config.num_workers, device.type == "cuda"
        )
        self.step, self.metrics = 0, {}
        self.reports: list[tuple[int, dict[str, float]]] = []  # (step, report) so far
        self.sums: dict[str, Tensor] = {}  # train metrics since the last report
        self.since_report = 0
        saved = self._load_latest()  # (path, state) or None
        self.net: nn.Module = self.model
        if env.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.ema = Ema(self.model, config.ema_decay) if config.ema_decay is not None else None
        self.resumed_from = None
        if saved is not None:
            self._restore_rest(*saved)
            self.resumed_from = self.step

    def run(self) -> TrainResult:
        bar_on = self.env.is_main and self.config.progress
        bar = tqdm(total=self.config.steps, initial=self.step, desc="train", disable=not bar_on)
        for step, report in self.reports:  # those of the checkpoint resumed from, if any
            self._publish(step, report)
        with bar:
            while self.step < self.config.steps:
                for key, value in self._train_step().items():
                    self.sums[key] = self.sums.get(key, 0.0) + value
                self.step, self.since_report = self.step + 1, self.since_report + 1
                bar.update(1)
                report = self._report()
                if report:
                    self.reports.append((self.step, report))
                if self.checkpoint_dir is not None and self._due(self.config.checkpoint_every):
                    self._save()
                if report:  # after the checkpoint: the step is durable
                    self._publish(self.step, report)
                    if self.env.is_main:
                        bar.set_postfix(loss=f"{report.get('train/loss', math.nan):.4g}")
        ema = self.ema.model if self.ema else None
        return TrainResult(self.model, ema, self.step, self.metrics, self.resumed_from)

    def _publish(self, step: int, report: dict[str, float]) -> None:
        self.metrics |= report
        if self.env.is_main and self.on_metrics is not None:
            self.on_metrics(step, dict(report))  # a copy: the checkpoint keeps the original

    def _report(self) -> dict[str, float]:
        """Train metrics when a report is due (collective), validation metrics when due."""
        report: dict[str, float] = {}
        if self.step == self.config.steps or self.step % self.config.log_every == 0:
            report |= self._mean_over_ranks(self.sums, self.since_report, "train/")
            report["train/lr"] = self.optimizer.param_groups[0]["lr"]
            self.sums, self.since_report = {}, 0
        val_every = self.config.val_every
        if val_every and getattr(self.task, "val_data", None) is not None and self._due(val_every):
            report |= self._validate()
        return report

    def _due(self, every: int | None) -> bool:
        """Every `every` steps and at the last step."""
        last = self.step == self.config.steps
        return last or (every is not None and self.step % every == 0)

    def _train_step(self) -> dict[str, Tensor]:
        """One optimizer update; returns its metrics as 0-dim tensors (no host sync)."""
        self.net.train()
        self.schedule.apply()
        micro = self.batches.next_step()
        totals: dict[str, Tensor] = {}
        for i, batch in enumerate(micro):
            # Gradients are all-reduced once per step, on the last micro-batch.
            skip_sync = self.env.enabled and i < len(micro) - 1
            with self.net.no_sync() if skip_sync else nullcontext():
                with self._autocast():
                    loss, metrics = self.task.loss(self.net, _to_device(batch, self.device))
                (loss / len(micro)).backward()  # mean of equal-size micro-batch means
            for key, value in {**metrics, "loss": loss}.items():
                totals[key] = totals.get(key, 0.0) + self._scalar(value) / len(micro)
        max_norm = self.config.clip_grad_norm or math.inf  # inf: measure, do not clip
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return totals | {"grad_norm": self._scalar(grad_norm)}

    def _autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _scalar(self, value: float | Tensor) -> Tensor:
        if isinstance(value, Tensor):
            value = value.detach()
        return torch.as_tensor(value, dtype=torch.float32, device=self.device)

    def _mean_over_ranks(self, sums: dict[str, Tensor], count: int, prefix: str):
        keys = sorted(sums)
        total = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]), self.env)
        means = (total / (count * self.env.world_size)).tolist()
        return {prefix + key: value for key, value in zip(keys, means, strict=True)}

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        report = self._evaluate(self.model, "val/")
        if self.ema is not None:
            report |= self._evaluate(self.ema.model, "val_ema/")
        return report

    def _evaluate(self, model: nn.Module, prefix: str) -> dict[str, float]:
        """Sample-weighted means of the loss and task metrics over this rank's val shard."""
        data, env = self.task.val_data, self.env
        if len(data) < env.world_size:  # every rank needs a shard to join the all-reduce
            raise ValueError(f"val_data has {len(data)} samples, fewer than {env.world_size} ranks")
        per_rank = max(
            1, -(-(self.config.val_batch_size or self.config.batch_size) // env.world_size)
        )
        shard = list(range(env.rank, len(data), env.world_size))
        batches = [shard[i : i + per_rank] for i in range(0, len(shard), per_rank)]
        loader = DataLoader(
            data,
            batch_sampler=batches,
            collate_fn=self.collate,
            num_workers=self.config.num_workers,
        )
        sums: dict[str, Tensor] = {}
        was_training = model.training
        model.eval()
        with rng.isolated(self.config.seed):
            for indices, batch in zip(batches, loader, strict=True):
                with self._autocast():
                    loss, metrics = self.task.loss(model, _to_device(batch, self.device))
                for key, value in {**metrics, "loss": loss}.items():
                    sums[key] = sums.get(key, 0.0) + self._scalar(value) * len(indices)
        model.train(was_training)
        sums["_samples"] = self._scalar(float(len(shard)))
        keys = sorted(sums)
        total = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]), env)
        values = dict(zip(keys, total.tolist(), strict=True))
        samples = values.pop("_samples")
        return {prefix + key: value / samples for key, value in values.items()}

    def _save(self) -> None:
        states = distributed.all_gather(rng.capture(), self.env)  # collective: every rank
        if self.env.is_main:
            assert self.checkpoint_dir is not None
            position = self.batches.position
            state = {
                "step": self.step,
                "epoch": position.epoch,
                "index": position.index,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "rng": states,
                "config": to_dict(self.config),
                "data_size": len(self.task.train_data),
                "reports": [[step, report] for step, report in self.reports],
            }
            checkpoint.save(checkpoint.path_for(self.checkpoint_dir, self.step), state)
            checkpoint.prune(self.checkpoint_dir, self.config.keep_checkpoints)
        distributed.barrier(self.env)  # no rank runs ahead of (or reads) a half-done save

    def _load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """Load model, optimizer, schedule, step and data position from the newest checkpoint."""
        path = checkpoint.latest(self.checkpoint_dir) if self.checkpoint_dir else None
        if path is None:
            return None
        state = checkpoint.load(path)
        checkpoint.check_model(path, state["model"], self.model.state_dict())
        saved_config, size = state["config"], len(self.task.train_data)
        if saved_config["batch_size"] != self.config.batch_size:
            raise checkpoint.CheckpointError(
                f"{path}: batch_size {saved_config['batch_size']} in the checkpoint, "
                f"{self.config.batch_size} in the config"
            )
        if state["data_size"] != size:
            raise checkpoint.CheckpointError(
                f"{path}: trained on {state['data_size']} samples, train_data has {size}"
            )
        if self.config.ema_decay is not None and state["ema"] is None:
            raise checkpoint.CheckpointError(f"{path}: has no EMA weights, but ema_decay is set")
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise checkpoint.CheckpointError(f"{path}: incompatible optimizer: {err}") from err
        self.schedule.load_state_dict(state["scheduler"])
        self.batches.position = Position(state["epoch"], state["index"])
        self.step = state["step"]
        # absent from checkpoints written before reports were kept: replay nothing then
        self.reports = [(step, report) for step, report in state.get("reports", [])]
        if self.env.is_main:
            log.info("resuming from %s (step %d)", path, self.step)
        return path, state

    def _restore_rest(self, path: Path, state: dict[str, Any]) -> None:
        """EMA and RNG: after the DDP wrap and EMA copy, so nothing draws after the restore."""
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        states = state["rng"]
        if len(states) == self.env.world_size:
            rng.restore(states[self.env.rank])
        else:  # another world size: the data order stays exact, the random draws cannot
            log.warning(
                "%s: saved by %d ranks, resuming on %d", path, len(states), self.env.world_size
            )
            world = self.env.world_size
            rng.seed_all(self.config.seed + world * self.step + self.env.rank)


def _adamw(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels only (not biases, norms, scales)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # Both groups always exist, so optimizer states line up with any checkpoint of the model.
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in nested dicts, lists and tuples moved to `device`; other leaves unchanged."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple
        return type(batch)(*(_to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch
