"""Decoder likelihoods p(x | z), summed over the pixels of one image, in nats.

Each likelihood turns the decoder network's raw output into its parameters (``params``) and scores
data under them (``log_prob``). The decoder never applies a sigmoid before a log: the Bernoulli
log-likelihood is computed from the logits, stable for any logit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from variants.catalog import DEFAULT_GAUSSIAN_VARIANCE

# name -> factory(variance, learn): the decoders a variant can name (variants.catalog.LIKELIHOOD_NAMES, in order).
# Plugins add theirs (variants.plugins).
LIKELIHOODS: dict[str, Callable[[float, bool], nn.Module]] = {}



def _bernoulli_log_prob_value(x: Tensor, logits: Tensor) -> Tensor:
    """sum_d x_d l_d - softplus(l_d), the negated BCE-with-logits, without its per-pixel log1p (not
    vectorised on CPU: it was 14% of a training step, ~10x the cost of this).

    softplus(l) = max(l, 0) - log sigmoid(|l|) = (l + |l|) / 2 - log sigmoid(|l|), and sigmoid(|l|) lies
    in [1/2, 1], so products of 16 of them stay far from float32's underflow: one log per 16 pixels.
    Error: ~16 float32 ulps per log, a few 1e-5 nats per image, below the rounding of the 784-term sums.
    """
    a = logits.abs()
    linear = (x * logits).sum(-1) - 0.5 * (logits.sum(-1) + a.sum(-1))
    s = a.sigmoid_()
    for _ in range(4):  # pairwise products: 784 -> 392 -> 196 -> 98 -> 49 factors
        if s.shape[-1] % 2:
            break
        half = s.shape[-1] // 2
        s = s[..., :half] * s[..., half:]
    return linear + s.log_().sum(-1)


class _BernoulliLogProb(torch.autograd.Function):
    """log p(x|l) summed over pixels; d/dl = x - sigmoid(l), d/dx = l (exact, not through the product trick).
    Written with setup_context and a generated vmap rule so that torch.func (grad, vmap) can take it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, logits: Tensor) -> Tensor:
        return _bernoulli_log_prob_value(x, logits)

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, logits = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grad_x = (logits * g).sum_to_size(x.shape) if ctx.needs_input_grad[0] else None
        grad_logits = ((x - torch.sigmoid(logits)) * g).sum_to_size(logits.shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_logits


class Bernoulli(nn.Module):
    """log p(x|z) = sum_d x_d log y_d + (1 - x_d) log(1 - y_d), y = sigmoid(logits): the seed's -BCE."""

    name = "bernoulli"

    def params(self, out: Tensor) -> Tensor:
        return out  # logits

    def mean(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        """x: [..., D] in [0, 1], broadcast against logits [..., D] -> [...]."""
        return _BernoulliLogProb.apply(x, logits)


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
