"""Which images a run trains, validates and tests on, on its device, binarised as the run asks."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.core.config import TrainConfig
from bench.core.data import MNIST
from bench.core.rng import BINARIZE, generator

BINARIZE_SEED = 1998  # the static binarisation (and the test set's, under dynamic) is the same for all runs


def binarize(x: Tensor, seed: int) -> Tensor:
    """A fixed Bernoulli draw of the pixels (static binarisation), the same for every run on every device:
    drawn on the CPU (CPU and CUDA generators give different numbers for one seed), then moved."""
    return torch.bernoulli(x.cpu(), generator=generator(torch.device("cpu"), BINARIZE, seed)).to(x.device, x.dtype)


def split_validation(data: MNIST, cfg: TrainConfig) -> tuple[Tensor, Tensor | None]:
    """The training images and the cfg.validation images held out from the end of the training set (None
    when 0): tuning selects on these, never on the test set. limit_train applies to what remains.
    Commands call it before they create a run: settings the data cannot meet are user errors."""
    left = cfg.check_split(len(data.train_x))
    train_x = data.train_x[:left][:cfg.limit_train]
    return train_x, (data.train_x[left:] if cfg.validation else None)


def validation_data(data: MNIST, cfg: TrainConfig, device: torch.device) -> Tensor | None:
    val_x = split_validation(data, cfg)[1]
    if val_x is None:
        return None
    val_x = val_x.to(device)
    return binarize(val_x, BINARIZE_SEED + 2) if cfg.binarize != "none" else val_x


def prepare_test(data: MNIST, cfg: TrainConfig, device: torch.device) -> Tensor:
    """The test images on ``device``, binarised once with a fixed seed when the run binarises."""
    test_x = data.test_x.to(device)
    return binarize(test_x, BINARIZE_SEED + 1) if cfg.binarize != "none" else test_x


def prepare_data(data: MNIST, cfg: TrainConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    train_x = split_validation(data, cfg)[0].to(device)
    test_x = prepare_test(data, cfg, device)
    if cfg.binarize == "static":
        train_x = binarize(train_x, BINARIZE_SEED)
    return train_x, test_x
