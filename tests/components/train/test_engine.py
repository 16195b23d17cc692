import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from components.train import CheckpointError, checkpoint, lr_at, rng, train
from components.train.data import BatchPlan
from tests.components.train.train_script import Stop, ToyTask, config


def _run(task, cfg, checkpoint_dir=None, on_eval=None):
    seen: dict[int, dict[str, float]] = {}
    result = train(task, cfg, checkpoint_dir, lambda step, m: seen.setdefault(step, m), on_eval)
    return result, seen


def _weights(*models: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for model in models for p in model.parameters()]


def test_one_step_matches_hand_computed_full_batch_adamw():
    task = ToyTask(dropout=0.0)
    cfg = config(steps=1, batch_size=16, grad_accum=4, clip_grad_norm=None, ema_decay=None)
    result, seen = _run(task, cfg)

    rng.seed_all(cfg.seed)
    model = task.model()
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.ndim == 2], "weight_decay": 0.1},
            {"params": [p for p in model.parameters() if p.ndim == 1], "weight_decay": 0.0},
        ],
        lr=lr_at(0, cfg),
    )
    first = BatchPlan(len(task.train_data), 16, seed=cfg.seed).order(0)[:16].tolist()
    x, y = task.train_data[first]
    loss = (model(x) - y).pow(2).mean()
    loss.backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    opt.step()
    assert seen[1]["train/loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert seen[1]["train/grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    assert seen[1]["train/lr"] == pytest.approx(cfg.lr / cfg.warmup_steps)
    for got, expected in zip(_weights(result.model), _weights(model), strict=True):
        torch.testing.assert_close(got, expected)


def test_accumulating_4_micro_batches_equals_one_big_batch():
    # Clipping is active (norms are ~2-5), so a wrong loss scale would change the weights.
    common = dict(steps=6, batch_size=16, clip_grad_norm=0.5, ema_decay=0.8, val_every=None)
    big, big_seen = _run(ToyTask(dropout=0.0), config(grad_accum=1, **common))
    acc, acc_seen = _run(ToyTask(dropout=0.0), config(grad_accum=4, **common))
    assert big_seen[6]["train/grad_norm"] > 0.5
    for step in big_seen:
        for key in ("train/loss", "train/grad_norm", "train/mae"):
            assert acc_seen[step][key] == pytest.approx(big_seen[step][key], rel=1e-5)
    for a, b in zip(_weights(acc.model, acc.ema), _weights(big.model, big.ema), strict=True):
        torch.testing.assert_close(a, b)


def test_metrics_validation_and_checkpoints(tmp_path):
    cfg = config(steps=12, log_every=4, val_every=6, checkpoint_every=4, keep_checkpoints=2)
    result, seen = _run(ToyTask(), cfg, tmp_path)
    assert sorted(seen) == [4, 6, 8, 12]
    assert sorted(seen[4]) == ["train/grad_norm", "train/loss", "train/lr", "train/mae"]
    assert sorted(seen[6]) == ["val/loss", "val/mae", "val_ema/loss", "val_ema/mae"]
    assert set(seen[12]) == set(seen[4]) | set(seen[6])
    assert seen[8]["train/lr"] == pytest.approx(lr_at(7, cfg))
    assert result.metrics == {**seen[6], **seen[4], **seen[8], **seen[12]}
    assert result.step == 12 and result.resumed_from is None
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["step-00000008.pt", "step-00000012.pt"]


def test_validation_is_deterministic_and_uses_the_ema():
    task = ToyTask()
    result, seen = _run(task, config(steps=5, val_every=5))
    x, y = task.val_data.tensors
    with torch.no_grad():
        val = (result.model.eval()(x) - y).pow(2).mean().item()
        val_ema = (result.ema(x) - y).pow(2).mean().item()
    assert seen[5]["val/loss"] == pytest.approx(val, rel=1e-5)
    assert seen[5]["val_ema/loss"] == pytest.approx(val_ema, rel=1e-5)
    assert val != pytest.approx(val_ema)


def test_finished_run_returns_at_once(tmp_path):
    cfg = config(steps=6)
    first, first_seen = _run(ToyTask(), cfg, tmp_path)
    again, seen = _run(ToyTask(), cfg, tmp_path)
    assert (again.step, again.resumed_from) == (6, 6)
    assert seen == first_seen and again.metrics == first.metrics  # replayed, not retrained
    for a, b in zip(
        _weights(again.model, again.ema), _weights(first.model, first.ema), strict=True
    ):
        assert torch.equal(a, b)


def test_resumed_run_replays_the_metrics_reported_before_the_crash(tmp_path):
    """on_metrics sees the calls of an uninterrupted run: those up to the checkpoint replayed
    from it, in order, then the rest; the result's metrics are the same too."""
    cfg = config(steps=12, log_every=2, val_every=3, checkpoint_every=4)
    calls: list = []
    whole = train(ToyTask(), cfg, None, lambda step, m: calls.append((step, m)))

    def crash_at_8(step: int, metrics: dict) -> None:
        before.append((step, dict(metrics)))
        if step == 8:
            raise Stop

    before: list = []
    with pytest.raises(Stop):
        train(ToyTask(), cfg, tmp_path, crash_at_8)
    got: list = []
    resumed = train(ToyTask(), cfg, tmp_path, lambda step, m: got.append((step, m)))
    assert resumed.resumed_from == 8
    assert [step for step, _ in got] == [step for step, _ in calls] == [2, 3, 4, 6, 8, 9, 10, 12]
    assert got[:5] == before  # the replayed calls are exactly what the crashed run reported
    assert got == calls and resumed.metrics == whole.metrics  # in one process: bitwise


class WiderTask(ToyTask):
    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.2), nn.Linear(32, 1))


@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        (WiderTask(), {}, r"incompatible model: 0.weight has shape \(16, 8\) in the checkpoint"),
        (ToyTask(), {"batch_size": 4}, "batch_size 8 in the checkpoint, 4 in the config"),
        (ToyTask(train_size=50), {}, "trained on 60 samples, train_data has 50"),
        (ToyTask(), {"ema_decay": 0.5}, "has no EMA weights, but ema_decay is set"),
    ],
)
def test_incompatible_checkpoint_names_the_file(tmp_path, task, overrides, message):
    _run(ToyTask(), config(steps=2, ema_decay=None), tmp_path)
    path = checkpoint.path_for(tmp_path, 2)
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        train(task, config(**{"steps": 4, "ema_decay": None, **overrides}), tmp_path)


def test_bf16_autocast_runs_on_cpu():
    result, seen = _run(ToyTask(), config(steps=3, precision="bf16", device="cpu"))
    assert result.step == 3 and math.isfinite(seen[3]["train/loss"])
    assert next(result.model.parameters()).dtype == torch.float32  # autocast, not a cast


class EvalProbe:
    """An eval hook that draws from every generator and runs the model, as a sampler would."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, model: nn.Module, step: int) -> dict[str, torch.Tensor]:
        noise = torch.randn(4, 8)
        draws = (noise, random.random(), np.random.rand())
        self.calls.append(
            {
                "step": step,
                "model": model,
                "training": model.training,
                "grad": torch.is_grad_enabled(),
                "weights": {k: v.clone() for k, v in model.state_dict().items()},
                "draws": draws,
            }
        )
        return {"sample_mean": model(noise).mean()}


def test_eval_hook_gets_the_ema_model_under_a_fixed_seed_and_leaves_training_alone():
    cfg = config(steps=10, val_every=5)
    probe = EvalProbe()
    hooked, seen = _run(ToyTask(), cfg, on_eval=probe)
    plain, plain_seen = _run(ToyTask(), cfg)

    # the training stream is untouched: same weights, same metrics (dropout draws each step)
    pairs = zip(_weights(hooked.model, hooked.ema), _weights(plain.model, plain.ema), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    without_eval = {s: {k: v for k, v in m.items() if k[:5] != "eval/"} for s, m in seen.items()}
    assert without_eval == plain_seen
    assert [call["step"] for call in probe.calls] == [5, 10]
    last = probe.calls[-1]
    assert all(call["model"] is hooked.ema for call in probe.calls)
    assert not last["training"] and not last["grad"]
    torch.testing.assert_close(last["weights"], hooked.ema.state_dict(), rtol=0, atol=0)
    with rng.isolated(cfg.seed):  # the same draws as validation's, at every call
        expected = (torch.randn(4, 8), random.random(), np.random.rand())
    for call in probe.calls:
        assert torch.equal(call["draws"][0], expected[0])
        assert call["draws"][1:] == expected[1:]
    with torch.no_grad():
        assert seen[10]["eval/sample_mean"] == pytest.approx(hooked.ema(expected[0]).mean().item())
    assert sorted(k for k in seen[5] if k[:5] == "eval/") == ["eval/sample_mean"]


def test_eval_hook_without_ema_or_val_data_gets_the_model_in_eval_mode():
    task = ToyTask()
    task.val_data = None
    probe = EvalProbe()
    result, seen = _run(task, config(steps=6, val_every=3, ema_decay=None), on_eval=probe)
    assert [call["step"] for call in probe.calls] == [3, 6]
    assert all(call["model"] is result.model and not call["training"] for call in probe.calls)
    assert "eval/sample_mean" in seen[3] and "val/loss" not in seen[3]
    assert result.model.training  # put back
