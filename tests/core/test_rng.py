"""Random streams are keyed explicitly by (purpose, seed, epoch): no two streams share a seed."""

from __future__ import annotations

import itertools

import pytest
import torch

from bench.core import rng


def test_no_two_streams_share_a_seed() -> None:
    keys = [(p, s, e) for p in rng.PURPOSES for s in range(0, 40)
            for e in (range(0, 300) if p in rng.PER_EPOCH else (None,))]
    seeds = {rng.stream_seed(*k) for k in keys}
    assert len(seeds) == len(keys)
    assert all(0 <= s < 2**63 for s in itertools.islice(seeds, 100))


def test_the_sample_grid_and_epoch_64_draw_different_numbers() -> None:
    """Under hash(tuple) the key (seed, 64) served both the sample grid and training epoch 64."""
    cpu = torch.device("cpu")
    grid = torch.randn(5, generator=rng.generator(cpu, rng.SAMPLES_GRID, 1))
    epoch64 = torch.randn(5, generator=rng.generator(cpu, rng.TRAIN_NOISE, 1, 64))
    assert not torch.equal(grid, epoch64)


def test_a_stream_is_the_same_in_every_call_and_an_unknown_purpose_is_refused() -> None:
    assert rng.stream_seed(rng.SHUFFLE, 3, 7) == rng.stream_seed(rng.SHUFFLE, 3, 7)
    with pytest.raises(ValueError, match="unknown random stream"):
        rng.stream_seed("sample-grid", 1)
    with pytest.raises(ValueError, match="keyed by an epoch"):
        rng.stream_seed(rng.SHUFFLE, 3)
    with pytest.raises(ValueError, match="not keyed by an epoch"):
        rng.stream_seed(rng.TEST_NOISE, 3, 1)


def test_the_training_streams_keep_their_keys_from_before_purposes() -> None:
    """Runs started before the streams were named resume onto the same draws (and the seed's curve stays)."""
    assert rng.stream_seed(rng.TRAIN_NOISE, 1, 5) == hash((1, 5)) & (2**63 - 1)
    assert rng.stream_seed(rng.SHUFFLE, 1, 5) == hash((1, 5, 0)) & (2**63 - 1)
    assert rng.stream_seed(rng.TEST_NOISE, 20140101) == hash((20140101,)) & (2**63 - 1)
