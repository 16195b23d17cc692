import random

import numpy as np
import pytest
import torch

from components.train import checkpoint, rng
from components.train.checkpoint import CheckpointError


def _state(step):
    return {"step": step, "model": {"w": torch.full((2,), float(step))}, "rng": [rng.capture()]}


def test_save_load_and_keep_newest(tmp_path):
    for step in (5, 10, 15, 20):
        checkpoint.save(checkpoint.path_for(tmp_path, step), _state(step))
        checkpoint.prune(tmp_path, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "step-00000015.pt",
        "step-00000020.pt",
    ]
    state = checkpoint.load(checkpoint.latest(tmp_path))
    assert (state["format"], state["version"], state["step"]) == ("loom-train", 1, 20)
    assert torch.equal(state["model"]["w"], torch.tensor([20.0, 20.0]))


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(checkpoint.path_for(tmp_path, 5), _state(5))
    real_save = torch.save

    def torn_save(obj, f):
        real_save(obj, f)
        f.truncate(100)  # half a file on disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(checkpoint.path_for(tmp_path, 10), _state(10))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000005.pt"]  # no temp file left
    assert checkpoint.load(checkpoint.latest(tmp_path))["step"] == 5


def test_leftover_temp_file_is_ignored(tmp_path):
    checkpoint.save(checkpoint.path_for(tmp_path, 5), _state(5))
    (tmp_path / ".step-00000010.pt.123.abcd.tmp").write_bytes(b"torn")  # a SIGKILLed writer
    assert checkpoint.latest(tmp_path) == checkpoint.path_for(tmp_path, 5)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "step-00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"^{bad}: not a readable checkpoint"):
        checkpoint.load(bad)
    torch.save({"format": "other"}, bad)
    with pytest.raises(CheckpointError, match=f"^{bad}: not a 'loom-train' checkpoint"):
        checkpoint.load(bad)
    torch.save({"format": "loom-train", "version": 99}, bad)
    with pytest.raises(CheckpointError, match=f"^{bad}: version 99, expected 1"):
        checkpoint.load(bad)


def test_check_model_names_file_and_parameter(tmp_path):
    path = tmp_path / "step-00000001.pt"
    saved = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    checkpoint.check_model(path, saved, {"w": torch.ones(2, 3), "b": torch.ones(2)})
    with pytest.raises(CheckpointError, match=r"w has shape \(2, 3\) in the checkpoint, \(4, 3\)"):
        checkpoint.check_model(path, saved, {"w": torch.zeros(4, 3), "b": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"missing \['c'\], unexpected \[\]"):
        checkpoint.check_model(path, saved, {**saved, "c": torch.zeros(1)})


def test_rng_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # and one in NumPy's
    checkpoint.save(tmp_path / "step-00000001.pt", {"rng": rng.capture()})
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    rng.seed_all(99)
    rng.restore(checkpoint.load(tmp_path / "step-00000001.pt")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_isolated_restores_the_stream():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    with rng.isolated(5):
        inside = torch.rand(2)
    with rng.isolated(5):
        assert torch.equal(torch.rand(2), inside)
    assert torch.equal(torch.rand(2), expected)
