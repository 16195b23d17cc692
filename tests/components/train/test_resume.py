"""Kill a run for real (SIGKILL after step k), resume it, and get the uninterrupted result.

The toy task has dropout and reshuffles every epoch, and 20 steps of 7 batches per epoch cross
two epoch boundaries: a resume that lost the RNG states or the data position would diverge.
"""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.train import checkpoint, train
from tests.components.train.train_script import Stop, ToyTask, config, stop_at

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


@pytest.mark.parametrize(("kill_at", "resumes_from"), [(10, 10), (13, 10)])
def test_killed_and_resumed_run_equals_uninterrupted(
    tmp_path, uninterrupted, kill_at, resumes_from
):
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--checkpoint-dir",
        str(tmp_path),
        "--kill-at",
        str(kill_at),
    ]
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint.latest(tmp_path) == checkpoint.path_for(tmp_path, resumes_from)

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
