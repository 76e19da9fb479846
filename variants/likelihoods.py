"""Decoder likelihoods p(x | z), summed over the pixels of one image, in nats.

Each likelihood turns the decoder network's raw output into its parameters (``params``) and scores
data under them (``log_prob``). The decoder never applies a sigmoid before a log: the Bernoulli
log-likelihood is computed from the logits, stable for any logit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from variants.catalog import DEFAULT_GAUSSIAN_VARIANCE

# name -> factory(variance, learn): the decoders a variant can name (variants.catalog.LIKELIHOOD_NAMES, in order).
# Plugins add theirs (variants.plugins).
LIKELIHOODS: dict[str, Callable[[float, bool], nn.Module]] = {}


class Bernoulli(nn.Module):
    """log p(x|z) = sum_d x_d log y_d + (1 - x_d) log(1 - y_d), y = sigmoid(logits): the seed's -BCE."""

    name = "bernoulli"

    def params(self, out: Tensor) -> Tensor:
        return out  # logits

    def mean(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        """x: [..., D] in [0, 1], broadcast against logits [..., D] -> [...].

        PyTorch's BCE with logits, finite for any logit. It replaced (2026-12-07) a custom autograd Function that
        took one log per 16 pixels: its 15 small ops cost more than the logs they saved, 0.16 ms of a 3 ms step
        (benchmarks/likelihood_speed.py).
        """
        x, logits = torch.broadcast_tensors(x, logits)  # BCE wants equal shapes; either side may have sample dims
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


class Gaussian(nn.Module):
    """log N(x; f(z), c I) = -||x - f(z)||^2 / (2c) - D/2 log(2 pi c), with its normalising constant.

    f(z) = sigmoid(decoder output) keeps the mean in the pixel range [0, 1]. The variance c is fixed
    (a hyper-parameter) or learned as one scalar shared by all pixels.
    """

    name = "gaussian"

    def __init__(self, variance: float = DEFAULT_GAUSSIAN_VARIANCE, learn: bool = False) -> None:
        super().__init__()
        if not variance > 0:
            raise ValueError(f"the Gaussian decoder's variance must be positive, got {variance}")
        self.log_c = nn.Parameter(torch.tensor(math.log(variance)), requires_grad=learn)

    @property
    def variance(self) -> float:
        return float(self.log_c.exp())

    def params(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)  # the mean f(z)

    def mean(self, mean: Tensor) -> Tensor:
        return mean

    def log_prob(self, x: Tensor, mean: Tensor) -> Tensor:
        d = mean.shape[-1]
        sq = (x - mean).pow(2).sum(-1)
        return -0.5 * sq / self.log_c.exp() - 0.5 * d * (math.log(2 * math.pi) + self.log_c)


LIKELIHOODS.update(bernoulli=lambda variance, learn: Bernoulli(), gaussian=Gaussian)


def make_likelihood(decoder: str, variance: float = DEFAULT_GAUSSIAN_VARIANCE, learn: bool = False) -> nn.Module:
    if decoder not in LIKELIHOODS:
        raise ValueError(f"unknown decoder {decoder!r}; choose from {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[decoder](variance, learn)
