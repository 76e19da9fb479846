"""Random streams: every draw of the harness comes from a generator keyed by the run's seed and what it is for,
so an epoch's numbers depend only on the parameters it starts from (a resumed run matches an uninterrupted
one) and runs on different devices see the same data."""

from __future__ import annotations

import torch


def generator(device: torch.device, *key: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)  # tuples of ints hash the same in every process
    return gen
