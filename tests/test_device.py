"""harness.device: the one device resolver every engine uses."""

import pytest
import torch

from harness.device import resolve_device
from harness.diff.engine import pick_device
from harness.errors import HarnessError
from harness.inference.generate import resolve_device as generate_device
from harness.train.common import resolve_device as train_device


def test_auto_cpu_and_unknown_names():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == pick_device("auto") == train_device("auto") == want
    assert generate_device("auto") == torch.device(want)
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(HarnessError, match="unknown device 'tpu'; known: auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when torch sees no CUDA device")
def test_cuda_without_a_gpu_is_one_clear_error():
    for fn in (resolve_device, pick_device, train_device, generate_device):
        with pytest.raises(HarnessError, match="'cuda' was asked for but torch sees no CUDA device"):
            fn("cuda")
