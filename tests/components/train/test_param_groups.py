"""Named param groups: per-group LR scale, settings and start step; per-group losses (a GAN)."""

import pytest
import torch
from torch import nn

from components.config import ConfigError
from components.train import CheckpointError, ParamGroup, checkpoint, lr_at, rng, train
from components.train.data import BatchPlan
from tests.components.train.train_script import GanTask, ToyTask, config


def _run(task, cfg, checkpoint_dir=None):
    seen: dict[int, dict[str, float]] = {}
    result = train(task, cfg, checkpoint_dir, lambda step, m: seen.setdefault(step, m))
    return result, seen


def _adamw(params, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """A hand-built reference: decay on matrices only, the LR set before each step."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=1.0, betas=betas)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _batch(task, cfg, step: int):
    """The samples of `step` (within epoch 0), as the engine draws them."""
    order = BatchPlan(len(task.train_data), cfg.batch_size, seed=cfg.seed).order(0)
    return list(task.train_data[order[step * cfg.batch_size : (step + 1) * cfg.batch_size]])


def _initial(task, cfg) -> nn.Module:
    rng.seed_all(cfg.seed)
    return task.model()


class BackboneTask(ToyTask):
    """DETR's recipe on the toy MLP: the first layer (the "backbone") at 0.1x the LR, the
    head without weight decay; one loss for both."""

    def param_groups(self, model):
        return [
            ParamGroup("backbone", model[0].parameters(), lr_scale=0.1),
            ParamGroup("head", model[3].parameters(), weight_decay=0.0),
        ]


def test_one_loss_two_groups_match_a_hand_built_adamw():
    task = BackboneTask(dropout=0.0)
    cfg = config(steps=5, clip_grad_norm=0.5, ema_decay=None, val_every=None)
    result, seen = _run(task, cfg)

    model = _initial(task, cfg)
    backbone, head = _adamw(model[0].parameters(), 0.1), _adamw(model[3].parameters(), 0.0)
    norms = []
    for step in range(cfg.steps):
        x, y = _batch(task, cfg, step)
        (model(x) - y).pow(2).mean().backward()
        norms.append(nn.utils.clip_grad_norm_(model.parameters(), 0.5).item())  # one norm
        _set_lr(backbone, 0.1 * lr_at(step, cfg))
        _set_lr(head, lr_at(step, cfg))
        backbone.step(), head.step()
        model.zero_grad()
    assert min(norms) > 0.5  # clipping was active at every step
    for step, norm in enumerate(norms, 1):
        assert seen[step]["train/grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert seen[step]["train/lr"] == pytest.approx(lr_at(step - 1, cfg))  # unscaled
    torch.testing.assert_close(result.model.state_dict(), model.state_dict())


def test_gan_losses_train_their_own_groups_like_two_hand_built_adamws():
    """Each loss reaches its group only (a generator step through D(G(x)) leaves D alone),
    each group is clipped on its own, and D starts at update 3 with its own settings."""
    task = GanTask(dropout=0.0, disc_start=3)
    cfg = config(steps=6, clip_grad_norm=0.4, ema_decay=None, val_every=None)
    result, seen = _run(task, cfg)

    model = _initial(task, cfg)
    gen, disc = model.generator, model.discriminator
    opt_g, opt_d = _adamw(gen.parameters(), 0.1), _adamw(disc.parameters(), 0.1, (0.5, 0.9))
    for step in range(cfg.steps):
        losses, _ = task.loss(model, _batch(task, cfg, step), step)
        g_grads = torch.autograd.grad(losses["generator"], list(gen.parameters()))
        d_grads = torch.autograd.grad(losses["discriminator"], list(disc.parameters()))
        params = [*gen.parameters(), *disc.parameters()]
        for p, g in zip(params, [*g_grads, *d_grads], strict=True):
            p.grad = g
        norm_g = nn.utils.clip_grad_norm_(gen.parameters(), 0.4).item()
        norm_d = nn.utils.clip_grad_norm_(disc.parameters(), 0.4).item()
        _set_lr(opt_g, lr_at(step, cfg))
        _set_lr(opt_d, 0.5 * lr_at(step, cfg))
        opt_g.step()
        if step >= 3:
            opt_d.step()
        model.zero_grad()
        report = seen[step + 1]
        assert report["train/grad_norm/generator"] == pytest.approx(norm_g, rel=1e-5)
        assert report["train/loss/generator"] == pytest.approx(losses["generator"].item())
        assert report["train/loss/discriminator"] == pytest.approx(losses["discriminator"].item())
        if step >= 3:
            assert report["train/grad_norm/discriminator"] == pytest.approx(norm_d, rel=1e-5)
        else:
            assert "train/grad_norm/discriminator" not in report
    assert seen[1]["train/grad_norm/generator"] > 0.4  # clipping was active
    torch.testing.assert_close(result.model.state_dict(), model.state_dict())


def test_a_group_before_its_start_step_keeps_weights_and_optimizer_state(tmp_path):
    task = GanTask(disc_start=3)
    cfg = config(steps=3, val_every=None)
    result, _ = _run(task, cfg, tmp_path)
    initial = _initial(task, cfg)
    state = checkpoint.load(checkpoint.latest(tmp_path))
    for name, value in result.model.discriminator.state_dict().items():
        assert torch.equal(value, initial.discriminator.state_dict()[name]), name
    assert not torch.equal(result.model.generator[0].weight, initial.generator[0].weight)
    # optimizer order: generator (matrices, vectors), then discriminator: 4 + 4 tensors
    assert sorted(state["optimizer"]["state"]) == [0, 1, 2, 3]
    assert state["param_groups"] == ["generator", "discriminator"]
    assert [g["lr_scale"] for g in state["optimizer"]["param_groups"]] == [1.0, 1.0, 0.5, 0.5]

    later, _ = _run(task, config(steps=4, val_every=None), tmp_path)  # resumes at 3
    assert not torch.equal(later.model.discriminator[0].weight, initial.discriminator[0].weight)


class RecordingGan(GanTask):
    def __init__(self, **kwargs):
        super().__init__(dropout=0.0, **kwargs)
        self.returned: list[tuple[int, str, float]] = []

    def loss(self, model, batch, step):
        losses, metrics = super().loss(model, batch, step)
        if model.training:
            self.returned += [(step, name, loss.item()) for name, loss in losses.items()]
        return losses, metrics


def test_alternating_updates_train_one_group_per_step():
    task = RecordingGan(disc_start=0, alternate=True)
    cfg = config(steps=4, log_every=2, ema_decay=None, val_every=None)
    result, seen = _run(task, cfg)
    assert [(step, name) for step, name, _ in task.returned] == [
        (0, "generator"),
        (1, "discriminator"),
        (2, "generator"),
        (3, "discriminator"),
    ]
    # each mean is over the steps that reported the loss, not over all steps
    losses = [value for _, _, value in task.returned]
    assert seen[2]["train/loss/generator"] == pytest.approx(losses[0])
    assert seen[2]["train/loss/discriminator"] == pytest.approx(losses[1])
    assert seen[4]["train/loss/generator"] == pytest.approx(losses[2])
    assert {"train/grad_norm/generator", "train/grad_norm/discriminator"} <= set(seen[4])

    # update 0 trains the generator only, update 1 the discriminator only
    one, _ = _run(RecordingGan(disc_start=0, alternate=True), config(steps=1, val_every=None))
    two, _ = _run(RecordingGan(disc_start=0, alternate=True), config(steps=2, val_every=None))
    initial = _initial(task, cfg)
    for before, after, trained in [
        (initial, one.model, "generator"),
        (one.model, two.model, "discriminator"),
    ]:
        for name in ("generator", "discriminator"):
            same = torch.equal(
                before.get_submodule(name)[0].weight, after.get_submodule(name)[0].weight
            )
            assert same == (name != trained), (trained, name)
    assert result.step == 4


def test_an_old_single_group_checkpoint_still_loads(tmp_path):
    cfg = config(steps=8, val_every=4, checkpoint_every=4)
    whole, whole_seen = _run(ToyTask(), cfg)
    _run(ToyTask(), config(steps=4, val_every=4), tmp_path)
    path = checkpoint.latest(tmp_path)
    state = checkpoint.load(path)
    del state["param_groups"]  # as written before param groups
    for group in state["optimizer"]["param_groups"]:
        del group["lr_scale"]
    checkpoint.save(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    resumed, seen = _run(ToyTask(), cfg, tmp_path)
    assert resumed.resumed_from == 4 and seen == whole_seen
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_on_resume_the_settings_are_the_tasks_not_the_checkpoints(tmp_path):
    cfg = config(steps=6, val_every=None)
    whole, _ = _run(BackboneTask(), cfg)
    _run(BackboneTask(), config(steps=3, val_every=None), tmp_path)
    path = checkpoint.latest(tmp_path)
    state = checkpoint.load(path)
    for group in state["optimizer"]["param_groups"]:
        group.update(lr_scale=7.0, betas=(0.1, 0.2), weight_decay=0.5)
    checkpoint.save(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    resumed, _ = _run(BackboneTask(), cfg, tmp_path)
    assert resumed.resumed_from == 3
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_other_param_groups_names_the_file(tmp_path):
    _run(ToyTask(), config(steps=2, ema_decay=None), tmp_path)
    path = checkpoint.path_for(tmp_path, 2)
    message = rf"^{path}: param groups \['model'\] in the checkpoint, \['backbone', 'head'\]"
    with pytest.raises(CheckpointError, match=message):
        train(BackboneTask(), config(steps=4, ema_decay=None), tmp_path)


class Groups(ToyTask):
    def __init__(self, declare):
        super().__init__()
        self.declare = declare

    def param_groups(self, model):
        return self.declare(model)


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda m: [], "expected a non-empty list of ParamGroup"),
        (
            lambda m: [ParamGroup("a", m[0].parameters()), ParamGroup("a", m[3].parameters())],
            r"names \['a', 'a'\] repeat",
        ),
        (
            lambda m: [ParamGroup("a", m.parameters()), ParamGroup("b", m[3].parameters())],
            "3.weight is in group 'a' and in 'b'",
        ),
        (
            lambda m: [ParamGroup("a", m[0].parameters())],
            r"trainable parameters in no group: \['3.weight', '3.bias'\]",
        ),
        (
            lambda m: [ParamGroup("a", [*m.parameters(), nn.Parameter(torch.zeros(1))])],
            "group 'a' holds a tensor that is not a parameter of the model",
        ),
    ],
)
def test_bad_param_groups_say_what_is_wrong(declare, message):
    with pytest.raises(ValueError, match=f"^param_groups: {message}"):
        train(Groups(declare), config(steps=1))


def test_frozen_parameters_need_no_group():
    def declare(model):
        model[0].requires_grad_(False)
        return [ParamGroup("head", model.parameters())]  # the frozen ones are left out

    result, _ = _run(Groups(declare), config(steps=2, val_every=None))
    initial = _initial(ToyTask(), config())
    assert torch.equal(result.model[0].weight, initial[0].weight)
    assert not torch.equal(result.model[3].weight, initial[3].weight)


@pytest.mark.parametrize(
    ("kwargs", "key", "expected"),
    [
        ({"lr_scale": 0.0}, "param_groups.d.lr_scale", "a float > 0"),
        ({"start_step": -1}, "param_groups.d.start_step", "an int >= 0"),
        ({"weight_decay": -0.1}, "param_groups.d.weight_decay", "None or a float >= 0"),
        ({"betas": (0.9, 1.0)}, "param_groups.d.betas", "None or two floats in [0, 1)"),
    ],
)
def test_param_group_settings_are_checked(kwargs, key, expected):
    with pytest.raises(ConfigError) as err:
        ParamGroup("d", [], **kwargs)
    assert (err.value.key, err.value.expected) == (key, expected)


def test_a_loss_for_an_unknown_group_is_an_error():
    class Typo(BackboneTask):
        def loss(self, model, batch):
            loss, metrics = super().loss(model, batch)
            return {"backbone": loss, "haed": loss}, metrics

    with pytest.raises(ValueError, match=r"losses for \['haed'\]; param groups: \['backbone'"):
        train(Typo(), config(steps=1))
