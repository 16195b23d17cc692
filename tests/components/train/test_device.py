import pytest
import torch
from torch import nn

from components.config import ConfigError
from components.train.device import (
    autocast_dtype,
    select_device,
    use_channels_last,
    use_compile,
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_is_cpu_without_accelerators():
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    assert select_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto", local_rank=1) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("mps")


def test_override_is_respected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "CUDA", ""])
def test_bad_name_is_a_config_error(name):
    with pytest.raises(ConfigError) as err:
        select_device(name)
    assert (err.value.key, err.value.value) == ("device", name)
    assert str(err.value) == f"device = {name!r}: expected one of auto|cpu|cuda|mps"


def test_unavailable_device_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        select_device("cuda")


def test_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16


@pytest.mark.parametrize(
    ("switch", "cpu", "cuda"),
    [("auto", False, True), ("always", True, True), ("never", False, False)],
)
def test_compile_switch(switch, cpu, cuda):
    assert use_compile(switch, torch.device("cpu")) is cpu
    assert use_compile(switch, torch.device("cuda", 0)) is cuda


def test_channels_last_auto_wants_cuda_and_4d_weights():
    conv, mlp, cuda = nn.Conv2d(2, 3, 3), nn.Linear(2, 3), torch.device("cuda", 0)
    assert use_channels_last("auto", cuda, conv)
    assert not use_channels_last("auto", cuda, mlp)
    assert not use_channels_last("auto", torch.device("cpu"), conv)
    assert use_channels_last("always", torch.device("cpu"), mlp)
    assert not use_channels_last("never", cuda, conv)


@pytest.mark.parametrize(
    ("call", "key"),
    [
        (lambda: use_compile("yes", torch.device("cpu")), "compile"),
        (lambda: use_channels_last("on", torch.device("cpu"), nn.Linear(1, 1)), "channels_last"),
    ],
)
def test_bad_switch_is_a_config_error(call, key):
    with pytest.raises(ConfigError, match="expected one of auto|always|never") as err:
        call()
    assert err.value.key == key
