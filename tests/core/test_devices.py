"""Device choice: auto picks what is there, an absent or unknown device is a user error, and sums that need
float64 get it wherever the device has it."""

from __future__ import annotations

import pytest
import torch

from bench.core.devices import accumulation_dtype, resolve_device
from bench.errors import UserError


def test_auto_picks_the_best_device_present() -> None:
    want = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto") == want
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_cuda_is_a_user_error_naming_the_way_out() -> None:
    with pytest.raises(UserError, match="cuda is not available here; use auto or cpu"):
        resolve_device("cuda")


def test_unknown_device_is_a_user_error_listing_the_choices() -> None:
    with pytest.raises(UserError, match="choose from auto, cpu, cuda, mps"):
        resolve_device("tpu")


def test_accumulation_is_float64_except_on_mps() -> None:
    assert accumulation_dtype(torch.device("cpu")) == torch.float64
    assert accumulation_dtype(torch.device("cuda")) == torch.float64
    assert accumulation_dtype(torch.device("mps")) == torch.float32  # mps has no float64
