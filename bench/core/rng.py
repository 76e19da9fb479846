"""Random streams: every draw of the harness comes from a generator keyed by the run's seed, what it is for (its
purpose) and, for per-epoch streams, the epoch. So an epoch's numbers depend only on the parameters it starts
from (a resumed run matches an uninterrupted one), and runs on different devices see the same data.

A stream's seed is the first 63 bits of SHA-256 of the text ``"<purpose>|<seed>|<epoch>"``: explicit, the same in
every process and Python version, and two streams differ whenever their (purpose, seed, epoch) do (up to a 2**-63
chance). It replaces ``hash(tuple)``, under which the key (seed, 64) served both the sample grid and epoch 64.

Three streams keep the keys they had before purposes were named (LEGACY_KEYS): the training noise and shuffle,
(seed, epoch) and (seed, epoch, 0), and the test noise, (seed,), under Python's hash of a tuple of ints (the same in
every process). A run started before this change then resumes onto the same draws, and the seed's recorded curve
(README) is unchanged. Those three tuples are distinct by construction (length, and the 0 in third place), so they
cannot collide with each other; the sample grid, whose old key was the collision, moved to SHA-256.
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
PER_EPOCH = (TRAIN_NOISE, SHUFFLE)  # keyed by an epoch too; the others by the seed alone
LEGACY_KEYS = {
    TRAIN_NOISE: lambda seed, epoch: (seed, epoch),
    SHUFFLE: lambda seed, epoch: (seed, epoch, 0),
    TEST_NOISE: lambda seed, epoch: (seed,),
}


def stream_seed(purpose: str, seed: int, epoch: int | None = None) -> int:
    """The 63-bit seed of the stream (purpose, seed, epoch)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream purpose {purpose!r}; add it to bench.core.rng.PURPOSES")
    if (epoch is not None) != (purpose in PER_EPOCH):
        raise ValueError(f"stream {purpose!r} is {'' if purpose in PER_EPOCH else 'not '}keyed by an epoch")
    if purpose in LEGACY_KEYS:
        return hash(LEGACY_KEYS[purpose](seed, epoch)) & 0x7FFF_FFFF_FFFF_FFFF
    key = f"{purpose}|{seed}|{'' if epoch is None else epoch}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def generator(device: torch.device, purpose: str, seed: int, epoch: int | None = None) -> torch.Generator:
    """A generator on ``device`` for the stream (purpose, seed, epoch)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(purpose, seed, epoch))
    return gen
