"""Random streams: every draw of the harness comes from a generator keyed by the run's seed, what it is for (its
purpose) and, for per-epoch streams, the epoch. So an epoch's numbers depend only on the parameters it starts
from (a resumed run matches an uninterrupted one), and runs on different devices see the same data.

A stream's seed is the first 63 bits of SHA-256 of the text ``"<purpose>|<seed>|<epoch>"``: explicit, the same in
every process and Python version, and two streams differ whenever their (purpose, seed, epoch) do (up to a 2**-63
chance). It replaces ``hash(tuple)``, under which the key (seed, 64) served both the sample grid and epoch 64.
"""

from __future__ import annotations

import hashlib

import torch

# Purposes: one name per kind of draw. A new kind of draw gets a new name here, never an old one.
TRAIN_NOISE = "train-noise"  # the estimator's eps (and dynamic binarisation) within one epoch
SHUFFLE = "shuffle"  # the order of the training images within one epoch
SAMPLES_GRID = "samples-grid"  # the 64 prior draws decoded into images/samples_NNN.png
TEST_NOISE = "test-noise"  # the one reparameterised sample per test image of the per-epoch test metrics
BINARIZE = "binarize"  # static binarisation of a split (the key's seed says which split)
PURPOSES = (TRAIN_NOISE, SHUFFLE, SAMPLES_GRID, TEST_NOISE, BINARIZE)


def stream_seed(purpose: str, seed: int, epoch: int | None = None) -> int:
    """The 63-bit seed of the stream (purpose, seed, epoch)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream purpose {purpose!r}; add it to bench.core.rng.PURPOSES")
    key = f"{purpose}|{seed}|{'' if epoch is None else epoch}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def generator(device: torch.device, purpose: str, seed: int, epoch: int | None = None) -> torch.Generator:
    """A generator on ``device`` for the stream (purpose, seed, epoch)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(purpose, seed, epoch))
    return gen
