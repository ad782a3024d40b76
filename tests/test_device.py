"""Device selection (config key `device`) and full float32, checked on a CPU-only machine by
pretending CUDA is or is not there."""

from __future__ import annotations

import pytest
import torch

from prunetime import study, training
from prunetime.config import ConfigError, validate_config


@pytest.fixture
def cuda_present(monkeypatch: pytest.MonkeyPatch):
    def set_present(present: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: present)

    return set_present


def test_auto_picks_cuda_only_when_a_gpu_is_there(cuda_present) -> None:
    cuda_present(True)
    assert training.resolve_device("auto") == "cuda"
    assert training.resolve_device("cuda") == "cuda"
    assert training.resolve_device("cpu") == "cpu"  # an explicit cpu stays on the CPU
    cuda_present(False)
    assert training.resolve_device("auto") == "cpu"
    assert training.resolve_device("cpu") == "cpu"


def test_cuda_without_a_gpu_is_a_clear_error_naming_the_key(cuda_present) -> None:
    cuda_present(False)
    with pytest.raises(RuntimeError, match=r"config key device='cuda'.*no CUDA device"):
        training.resolve_device("cuda")
    # the same error from the set-up every job runs first, before it loads any data
    with pytest.raises(RuntimeError, match=r"device='cuda'"):
        study.setup_torch("cuda", threads=1)


def test_unknown_device_is_rejected_by_the_schema_and_the_job() -> None:
    with pytest.raises(ConfigError, match="device"):
        validate_config({"device": "gpu", "architectures": {"a": {"model": "lenet300100"}}})
    with pytest.raises(ValueError, match=r"config key device='gpu'"):
        training.resolve_device("gpu")


def test_setup_keeps_gpu_arithmetic_in_ieee_float32(cuda_present) -> None:
    cuda_present(False)
    threads = torch.get_num_threads()
    try:
        # start from torch's GPU defaults: TF32 convolutions
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "tf32"
        assert study.setup_torch("auto", threads=1) == "cpu"
        assert torch.get_num_threads() == 1
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cudnn.rnn.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        # deterministic algorithms, without the NaN fill of every new tensor (a debug aid
        # that cost a write pass per allocation)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch._C._get_deterministic_fill_uninitialized_memory() is False
    finally:
        torch.set_num_threads(threads)
