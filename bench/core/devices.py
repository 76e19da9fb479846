"""Which device a run uses, and what each device can do."""

from __future__ import annotations

import torch

from bench.errors import UserError


def resolve_device(name: str) -> str:
    """auto -> cuda, else mps, else cpu; an explicit device that is not there is a user error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if name == "cpu" or (name.startswith("cuda") and cuda) or (name == "mps" and mps):
        return name
    if name.startswith("cuda") or name == "mps":
        raise UserError(f"device {name} is not available here; use auto or cpu")
    raise UserError(f"unknown device {name!r}; choose from auto, cpu, cuda, mps")


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype for sums that must not lose digits (metrics over 10,000 images, log-mean-exps, gradient
    moments): float64, except on mps, which has none; float32 there."""
    return torch.float32 if device.type == "mps" else torch.float64
