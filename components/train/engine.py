"""The one training loop for every torch trainer in Loom.

A trainer supplies a `Task` (model factory, loss, datasets; optionally named param groups)
and a `TrainConfig`; `train` does the rest, the same way for every model:

    seed -> model (channels-last weights: on CUDA, for conv models) -> param groups -> AdamW,
    LR schedule -> resume from the newest checkpoint, if any -> DDP wrap (with param groups:
    rank 0's weights broadcast instead) -> EMA -> torch.compile (on CUDA)
    -> per step: LR of each group (schedule x lr_scale); grad_accum micro-batches (bf16
       autocast where configured), each loss backpropagated into its own groups' params;
       with param groups, gradients averaged over ranks; clip (per loss); update the groups
       that have started; EMA update
    -> every N steps: train metrics, validation, the eval hook (rank 0), checkpoint, on_metrics

Param groups (`groups.py`): a task without `param_groups(model) -> list[ParamGroup]` trains
one group, "model", of every trainable parameter (one AdamW, as always). A task with it names
groups that hold every trainable parameter once, each with its own `lr_scale` (a DETR
backbone at 0.1), `weight_decay`, `betas` and `start_step` (a GAN discriminator that starts at
update k: until then its weights and optimizer state stay as they are).

Losses: `Task.loss` returns one scalar, backpropagated into every started group and clipped as
one gradient ("train/loss", "train/grad_norm"), or a dict {group name: scalar}, each
backpropagated into its own group's params only (`autograd.backward(inputs=...)`) and clipped
on its own ("train/loss/<group>", "train/grad_norm/<group>"). A group missing from the dict,
or not started yet, is not updated at that step (its loss is still logged). So a GAN returns
{"generator": g_loss, "discriminator": d_loss} for simultaneous updates from one forward pass
(d_loss on `fake.detach()`), or one of the two per step for alternating updates. `Task.loss`
receives the step when it has a `step` parameter, `loss(model, batch, step)` (updates done so
far; the same in validation): to add the adversarial term to g_loss once the discriminator
trains, say. A metric is averaged over the steps that reported it.

Resume: when `checkpoint_dir` holds a checkpoint, `train` continues from the newest one:
weights, optimizer (every group's state), schedule, EMA, every RNG (per rank) and the data
position, so the rest of the run sees the same batches and random draws as an uninterrupted
run. (Random draws inside `Dataset.__getitem__` are exact with `num_workers: 0`; worker
processes are seeded per epoch, so theirs are not reproduced after a mid-epoch resume.) A
checkpoint is also written at the last step, so calling `train` again on a finished run
returns at once. Each checkpoint also holds every metrics report so far, which a resumed run
first replays through `on_metrics` (and into `TrainResult.metrics`): the caller sees the calls
of an uninterrupted run. Optimizer settings (lr_scale, betas, weight decay) come from the
config and the task, not the checkpoint. A checkpoint that does not fit (parameter names or
shapes, param group names, batch_size, dataset size, EMA) raises `CheckpointError` naming the
file; one written before param groups is the default group's.

Validation runs under a fixed seed (`rng.isolated`): its random draws (diffusion noise, say)
repeat at every evaluation and leave the training stream untouched. The eval hook,
`on_eval(model, step)`, is where a stage draws reconstruction or sample grids and logs them
live: it runs at every validation step (`val_every`, with or without `val_data`), after
validation, on rank 0 only (so it must not call collectives), with the EMA model when EMA is
on (else the model) in eval mode, under `torch.no_grad()`, without autocast and under the same
fixed seed as validation. Numbers it returns join that step's report as "eval/<key>".

DDP: under `torchrun` each rank takes its slice of every micro-batch (`data.BatchPlan`) and
gradients are averaged over ranks, so W ranks train like one process with the same
`batch_size`. Only rank 0 shows progress, calls `on_metrics` and writes checkpoints.
`on_metrics` runs after the step's checkpoint, so a step it reports survives a crash in the
callback. Without param groups the model is wrapped in DDP, which synchronizes gradients
through `forward` only: `Task.loss` must run the model by calling it (`model(x)`). With param
groups `Task.loss` gets the plain model (`model.generator(z)` is fine): the engine broadcasts
rank 0's weights at the start and its buffers before each step, and averages the gradients
after the backward passes (no overlap with compute, but any number of backward passes into
any subset of the parameters).

Runtime knobs: `compile` compiles the model's `forward` in place (`nn.Module.compile`: the
module, its state dict and checkpoints stay as they are; submodules that `Task.loss` calls
directly run eagerly, and Dynamo does not trace a bare `nn.Sequential`, one of torch's own
modules). `channels_last` stores 4-D weights (and so their gradients and AdamW moments)
channels-last; convolutions follow the weights' layout, inputs are left as they are. A run
resumes exactly under the same knobs; changing them between runs only changes rounding (and,
for compile, the dropout masks, which compiled kernels draw their own way).

Metrics passed to `on_metrics(step, metrics)` (means over the steps since the last report and
over ranks): "train/loss", "train/<task metric>", "train/lr" (the schedule's rate, before
lr_scale), "train/grad_norm" (before clipping); at validations "val/loss", "val/<task metric>"
and, with EMA, "val_ema/...", then the hook's "eval/...".
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sized
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from components.config import to_dict
from components.train import checkpoint, distributed, rng
from components.train.config import TrainConfig
from components.train.data import Batches, BatchPlan, Position
from components.train.device import autocast_dtype, select_device, use_channels_last, use_compile
from components.train.ema import Ema
from components.train.groups import (
    DEFAULT,
    ParamGroup,
    adamw,
    check_groups,
    default_groups,
    parameters,
)
from components.train.schedule import LrSchedule

log = logging.getLogger(__name__)

MetricsFn = Callable[[int, dict[str, float]], None]
EvalFn = Callable[[nn.Module, int], Mapping[str, float | Tensor] | None]
Loss = Tensor | Mapping[str, Tensor]  # one scalar, or one per param group


class _Target(NamedTuple):
    """One loss of a step and the started groups it trains (none: it is only logged)."""

    group: str | None  # None: the single loss of `Task.loss`, else the group it is for
    loss: Tensor
    groups: list[ParamGroup]

    def key(self, metric: str) -> str:
        return metric if self.group is None else f"{metric}/{self.group}"


class Task(Protocol):
    """What a trainer supplies. Optional attributes: `val_data: Dataset | None` (validation
    set), `collate(samples) -> batch` (default: torch's `default_collate`) and
    `param_groups(model) -> list[ParamGroup]` (default: one group of every trainable
    parameter). `loss` may take a third parameter, `step` (see the module docstring)."""

    train_data: Dataset  # map-style

    def model(self) -> nn.Module:
        """A freshly initialized model (called once per run, after seeding)."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[Loss, Mapping[str, float | Tensor]]:
        """Scalar mean loss of `batch` (on the run's device), or a dict {param group: scalar
        mean loss}, and extra metrics to log."""
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
    on_eval: EvalFn | None = None,
) -> TrainResult:
    """Train `task` for `config.steps` optimizer steps, resuming from `checkpoint_dir`."""
    env = distributed.detect()
    device = select_device(config.device, env.local_rank)
    created = distributed.init(env, device)
    try:
        return _Run(task, config, env, device, checkpoint_dir, on_metrics, on_eval).run()
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
        on_eval: EvalFn | None,
    ):
        self.task, self.config, self.env, self.device = task, config, env, device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.on_metrics, self.on_eval = on_metrics, on_eval
        self.dtype = autocast_dtype(config.precision, device)
        self.collate = getattr(task, "collate", None)
        self.loss_takes_step = _takes_step(task.loss)
        # Per-rank streams (dropout differs across ranks); rank 0's init is broadcast.
        rng.seed_all(config.seed + env.rank)
        self.model = task.model().to(device)
        if use_channels_last(config.channels_last, device, self.model):
            # Module.to takes memory_format at runtime; torch's overloads of `to` leave it out
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.grouped = hasattr(task, "param_groups")
        self.groups = (
            check_groups(task.param_groups(self.model), self.model)
            if hasattr(task, "param_groups")  # = self.grouped, spelled so that mypy narrows task
            else default_groups(self.model)
        )
        self.optimizer = adamw(self.groups, config)
        self.schedule = LrSchedule(self.optimizer, config)
        plan = BatchPlan(
            _size(task.train_data),
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
        self.step, self.lr = 0, math.nan
        self.metrics: dict[str, float] = {}
        self.reports: list[tuple[int, dict[str, float]]] = []  # (step, report) so far
        self.sums: dict[str, Tensor] = {}  # train metrics since the last report
        self.counts: dict[str, int] = {}  # steps that reported each of them
        saved = self._load_latest()  # (path, state) or None
        self.net: nn.Module = self.model
        if env.enabled and self.grouped:  # gradients averaged by `_train_step`
            distributed.broadcast_([*self.model.parameters(), *self.model.buffers()], env)
        elif env.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.ema = Ema(self.model, config.ema_decay) if config.ema_decay is not None else None
        if use_compile(config.compile, device):
            self.model.compile()  # after the EMA copy, which stays eager
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
                    self.counts[key] = self.counts.get(key, 0) + 1
                self.step += 1
                bar.update(1)
                report = self._report()
                if report:
                    self.reports.append((self.step, report))
                if self.checkpoint_dir is not None and self._due(self.config.checkpoint_every):
                    self._save()
                if report:  # after the checkpoint: the step is durable
                    self._publish(self.step, report)
                    losses = {
                        key.removeprefix("train/"): f"{value:.4g}"
                        for key, value in report.items()
                        if key.startswith("train/loss")
                    }
                    if self.env.is_main and losses:
                        bar.set_postfix(losses)
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
            report |= self._mean_over_ranks(self.sums, self.counts, "train/")
            report["train/lr"] = self.lr
            self.sums, self.counts = {}, {}
        if self.config.val_every and self._due(self.config.val_every):
            if getattr(self.task, "val_data", None) is not None:
                report |= self._validate()
            if self.on_eval is not None and self.env.is_main:
                report |= self._eval_hook()
        return report

    def _due(self, every: int | None) -> bool:
        """Every `every` steps and at the last step."""
        last = self.step == self.config.steps
        return last or (every is not None and self.step % every == 0)

    def _train_step(self) -> dict[str, Tensor]:
        """One optimizer update; returns its metrics as 0-dim tensors (no host sync)."""
        self.net.train()
        self.lr = self.schedule.apply()
        started = {g.name for g in self.groups if self.step >= g.start_step}
        if self.env.enabled and self.grouped:  # what DDP does before forward
            distributed.broadcast_(list(self.model.buffers()), self.env)
        micro = self.batches.next_step()
        totals: dict[str, Tensor] = {}
        updated: dict[str, list[nn.Parameter]] = {}  # grad-norm key -> params, in order
        for i, batch in enumerate(micro):
            # Gradients are all-reduced once per step, on the last micro-batch.
            skip_sync = self.env.enabled and not self.grouped and i < len(micro) - 1
            # skip_sync: self.net is the DDP wrapper
            with cast(DistributedDataParallel, self.net).no_sync() if skip_sync else nullcontext():
                with self._autocast():
                    loss, metrics = self._loss(self.net, _to_device(batch, self.device))
                targets = self._targets(loss, started)
                self._backward(targets, len(micro))
            for key, value in {**metrics, **{t.key("loss"): t.loss for t in targets}}.items():
                totals[key] = totals.get(key, 0.0) + self._scalar(value) / len(micro)
            updated |= {t.key("grad_norm"): parameters(t.groups) for t in targets if t.groups}
        if self.env.enabled and self.grouped:
            distributed.average_gradients([p for ps in updated.values() for p in ps], self.env)
        max_norm = self.config.clip_grad_norm or math.inf  # inf: measure, do not clip
        for key, params in updated.items():  # one norm per loss
            totals[key] = self._scalar(nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return totals

    def _loss(self, model: nn.Module, batch: Any) -> tuple[Loss, Mapping[str, float | Tensor]]:
        if self.loss_takes_step:
            loss: Callable[..., tuple[Loss, Mapping[str, float | Tensor]]] = self.task.loss
            return loss(model, batch, step=self.step)
        return self.task.loss(model, batch)

    def _targets(self, loss: Loss, started: set[str]) -> list[_Target]:
        """The losses `Task.loss` returned, each with the started groups it trains."""
        if not isinstance(loss, Mapping):
            return [_Target(None, loss, [g for g in self.groups if g.name in started])]
        names = [g.name for g in self.groups]
        unknown = sorted(set(loss) - set(names))
        if unknown:
            raise ValueError(f"Task.loss returned losses for {unknown}; param groups: {names}")
        return [
            _Target(g.name, loss[g.name], [g] if g.name in started else [])
            for g in self.groups
            if g.name in loss
        ]

    def _backward(self, targets: list[_Target], micro_batches: int) -> None:
        """Each loss into its groups' params only; the graph is kept for the losses after it."""
        todo = [(t.loss, t.groups) for t in targets if parameters(t.groups)]
        for i, (loss, groups) in enumerate(todo):
            loss = loss / micro_batches  # mean of equal-size micro-batch means
            retain = i < len(todo) - 1
            if len(groups) == len(self.groups):  # every trainable parameter
                loss.backward(retain_graph=retain)
            else:
                torch.autograd.backward(loss, inputs=parameters(groups), retain_graph=retain)

    def _autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _scalar(self, value: float | Tensor) -> Tensor:
        if isinstance(value, Tensor):
            value = value.detach()
        return torch.as_tensor(value, dtype=torch.float32, device=self.device)

    def _mean_over_ranks(self, sums: dict[str, Tensor], counts: dict[str, int], prefix: str):
        keys = sorted(sums)
        total = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]), self.env)
        steps = torch.tensor([counts[k] * self.env.world_size for k in keys], device=total.device)
        means = (total / steps).tolist()
        return {prefix + key: value for key, value in zip(keys, means, strict=True)}

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        report = self._evaluate(self.model, "val/")
        if self.ema is not None:
            report |= self._evaluate(self.ema.model, "val_ema/")
        return report

    def _evaluate(self, model: nn.Module, prefix: str) -> dict[str, float]:
        """Sample-weighted means of the loss and task metrics over this rank's val shard."""
        # val_data: optional, so not in the Task protocol
        data, env = getattr(self.task, "val_data"), self.env  # noqa: B009
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
                    loss, metrics = self._loss(model, _to_device(batch, self.device))
                losses = {t.key("loss"): t.loss for t in self._targets(loss, set())}
                for key, value in {**metrics, **losses}.items():
                    sums[key] = sums.get(key, 0.0) + self._scalar(value) * len(indices)
        model.train(was_training)
        sums["_samples"] = self._scalar(float(len(shard)))
        keys = sorted(sums)
        total = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]), env)
        values = dict(zip(keys, total.tolist(), strict=True))
        samples = values.pop("_samples")
        return {prefix + key: value / samples for key, value in values.items()}

    def _eval_hook(self) -> dict[str, float]:
        """`on_eval` on the EMA model (else the model), isolated like validation."""
        assert self.on_eval is not None
        model = self.ema.model if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), rng.isolated(self.config.seed):
                extra = self.on_eval(model, self.step)
        finally:
            model.train(was_training)
        return {f"eval/{key}": float(value) for key, value in (extra or {}).items()}

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
                "param_groups": [g.name for g in self.groups],  # in the optimizer, 2 each
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "rng": states,
                "config": to_dict(self.config),
                "data_size": _size(self.task.train_data),
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
        saved_config, size = state["config"], _size(self.task.train_data)
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
        # absent from checkpoints written before param groups: one group, the default
        saved, names = state.get("param_groups", [DEFAULT]), [g.name for g in self.groups]
        if saved != names:
            raise checkpoint.CheckpointError(
                f"{path}: param groups {saved} in the checkpoint, {names} in the task"
            )
        self.model.load_state_dict(state["model"])
        settings = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise checkpoint.CheckpointError(f"{path}: incompatible optimizer: {err}") from err
        for group, own in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(own)  # the state is the checkpoint's, the settings are this run's
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


def _size(data: Dataset) -> int:
    """len() of a map-style data set (torch's `Dataset` does not declare `__len__`)."""
    return len(cast(Sized, data))


def _takes_step(loss: Callable) -> bool:
    try:
        return "step" in inspect.signature(loss).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin, say)
        return False
