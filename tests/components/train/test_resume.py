"""Kill a run for real (SIGKILL after step k), resume it, and get the uninterrupted result.

The toy task has dropout and reshuffles every epoch, and 20 steps of 7 batches per epoch cross
two epoch boundaries: a resume that lost the RNG states or the data position would diverge.
The GAN task adds two param groups, the discriminator's starting at update 7.
"""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.train import checkpoint, train
from tests.components.train.train_script import GanTask, Stop, ToyTask, config, stop_at

SCRIPT = Path(__file__).with_name("train_script.py")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("uninterrupted")
    train(ToyTask(), config(), directory)
    return checkpoint.load(checkpoint.latest(directory))


def _assert_same_run(got: dict, expected: dict) -> None:
    assert (got["step"], got["epoch"], got["index"]) == (20, 2, 6)
    assert (expected["step"], expected["epoch"], expected["index"]) == (20, 2, 6)
    for part in ("model", "ema"):
        torch.testing.assert_close(got[part], expected[part], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got["optimizer"], expected["optimizer"], rtol=1e-6, atol=1e-7)
    assert torch.equal(got["rng"][0]["torch"], expected["rng"][0]["torch"])
    # every report of the run, those from before the kill included (a resume replays them)
    assert [step for step, _ in got["reports"]] == list(range(1, 21))
    for (step, report), (_, want) in zip(got["reports"], expected["reports"], strict=True):
        assert report == pytest.approx(want, rel=1e-5), step


def _kill(directory: Path, kill_at: int, resumes_from: int, task: str = "toy") -> None:
    cmd = [sys.executable, str(SCRIPT), "--checkpoint-dir", str(directory)]
    cmd += ["--kill-at", str(kill_at), "--task", task]
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint.latest(directory) == checkpoint.path_for(directory, resumes_from)


@pytest.mark.parametrize(("kill_at", "resumes_from"), [(10, 10), (13, 10)])
def test_killed_and_resumed_run_equals_uninterrupted(
    tmp_path, uninterrupted, kill_at, resumes_from
):
    _kill(tmp_path, kill_at, resumes_from)

    result = train(ToyTask(), config(), tmp_path)
    assert (result.resumed_from, result.step) == (resumes_from, 20)
    _assert_same_run(checkpoint.load(checkpoint.latest(tmp_path)), uninterrupted)


def _crash_at_10(task: ToyTask, directory: Path) -> None:
    with pytest.raises(Stop):
        train(task, config(), directory, stop_at(10))


def test_resume_without_the_rng_state_would_diverge(tmp_path, uninterrupted):
    # The control for the test above: its tolerance catches a wrong dropout stream.
    directory = tmp_path / "run"
    _crash_at_10(ToyTask(), directory)
    path = checkpoint.latest(directory)
    state = checkpoint.load(path)
    state["rng"][0]["torch"] = torch.manual_seed(123).get_state()
    checkpoint.save(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    train(ToyTask(), config(), directory)
    with pytest.raises(AssertionError):
        _assert_same_run(checkpoint.load(checkpoint.latest(directory)), uninterrupted)


def test_resume_without_the_data_position_would_diverge(tmp_path):
    directory = tmp_path / "run"
    _crash_at_10(ToyTask(dropout=0.0), directory)
    shutil.copytree(directory, tmp_path / "kept")
    path = checkpoint.latest(directory)
    state = checkpoint.load(path)
    state["index"] = 0  # restart the epoch
    checkpoint.save(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    moved = train(ToyTask(dropout=0.0), config(), directory).model.state_dict()
    exact = train(ToyTask(dropout=0.0), config(), tmp_path / "kept").model.state_dict()
    assert not torch.allclose(moved["0.weight"], exact["0.weight"], rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def gan_uninterrupted(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("gan")
    train(GanTask(), config(), directory)
    return checkpoint.load(checkpoint.latest(directory))


def _assert_identical(got, expected, where: str = "checkpoint") -> None:
    """Bitwise: every tensor equal, every other leaf ==."""
    if isinstance(expected, dict):
        assert sorted(got) == sorted(expected), where
        for key in expected:
            _assert_identical(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            _assert_identical(a, b, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), where
    else:
        assert got == expected, where


@pytest.mark.parametrize(("kill_at", "resumes_from"), [(6, 5), (13, 10)])
def test_killed_gan_with_a_delayed_group_resumes_bit_identically(
    tmp_path, gan_uninterrupted, kill_at, resumes_from
):
    """Killed before the discriminator's first update (resumes at 5, its optimizer state
    still empty) or after it (resumes at 10)."""
    _kill(tmp_path, kill_at, resumes_from, task="gan")
    result = train(GanTask(), config(), tmp_path)
    assert (result.resumed_from, result.step) == (resumes_from, 20)
    got = checkpoint.load(checkpoint.latest(tmp_path))
    assert got["param_groups"] == ["generator", "discriminator"]
    assert "train/grad_norm/discriminator" not in dict(got["reports"])[7]
    assert "train/grad_norm/discriminator" in dict(got["reports"])[8]  # update 7 is step 8's
    _assert_identical(got, gan_uninterrupted)


def test_the_gan_resume_check_would_catch_a_lost_discriminator_state(tmp_path, gan_uninterrupted):
    # The control for the test above: resetting the discriminator's moments diverges.
    directory = tmp_path / "run"
    with pytest.raises(Stop):
        train(GanTask(), config(), directory, stop_at(10))
    path = checkpoint.latest(directory)
    state = checkpoint.load(path)
    for index in (4, 5, 6, 7):  # the discriminator's tensors in the optimizer
        del state["optimizer"]["state"][index]
    checkpoint.save(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    train(GanTask(), config(), directory)
    with pytest.raises(AssertionError):
        _assert_identical(checkpoint.load(checkpoint.latest(directory)), gan_uninterrupted)
