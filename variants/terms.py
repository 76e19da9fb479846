"""What every ELBO estimator is built from: the loss terms it returns, the noise it draws, and the log densities.

Notation (seed, Kingma & Welling 2014): q(z|x) = N(mu, sigma^2 I), p(z) = N(0, I), J latent dims,
z^(l) = g(eps^(l), x) = mu + sigma * eps^(l), eps^(l) ~ N(0, I), l = 1..L. sg(.) is stop-gradient (detach).

Noise: estimators draw eps with ``sample_eps``. Inside ``fixed_noise(eps)`` it returns the given eps instead, so a
gradient study can draw every repetition's noise up front and take the draws as a batch dimension
(torch.func.vmap over them; random draws inside vmap would need a generator per draw).
Inside ``supplied_noise(draws)`` it returns the given draws one call after another: the compiled training step
(bench.training.steps) draws a step's noise outside its graph, where a torch.Generator can run, in the shapes
and order that ``record_draws`` saw the estimator draw.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)

_FIXED: ContextVar[Tensor | None] = ContextVar("fixed_noise", default=None)
# Plain lists, not ContextVars: torch.compile traces reads and pops of a list, not ContextVar.set. Only the
# training step of the one thread that trains sets them, for the length of one call.
_SUPPLY: list[Tensor] = []
_RECORD: list[list[tuple[tuple[int, ...], torch.dtype, torch.device]]] = []


@dataclass
class LossTerms:
    """Per-datapoint tensors of shape [B], in nats: ``recon`` (the sampled -log p(x|z) part), ``kld`` (the rest),
    ``loss = recon + kld = -(the bound's estimate)``. ``surrogate`` is set when the gradient to follow is not the
    gradient of ``loss`` (score function, DReG, PIWAE); ``objective`` is what the harness differentiates."""

    recon: Tensor
    kld: Tensor
    surrogate: Tensor | None = None

    @property
    def loss(self) -> Tensor:
        return self.recon + self.kld

    @property
    def objective(self) -> Tensor:
        return self.loss if self.surrogate is None else self.surrogate


@contextlib.contextmanager
def fixed_noise(eps: Tensor) -> Iterator[None]:
    """Within the block, ``sample_eps`` returns ``eps`` (of the shape it would draw) instead of drawing."""
    token = _FIXED.set(eps)
    try:
        yield
    finally:
        _FIXED.reset(token)


@contextlib.contextmanager
def supplied_noise(draws: list[Tensor]) -> Iterator[None]:
    """Within the block, ``sample_eps`` returns ``draws[0]``, then ``draws[1]``, ...; all must be taken."""
    _SUPPLY[:] = draws
    try:
        yield
        if _SUPPLY:
            raise ValueError(f"the estimator took {len(draws) - len(_SUPPLY)} of the {len(draws)} draws supplied")
    finally:
        _SUPPLY.clear()


@contextlib.contextmanager
def record_draws() -> Iterator[list[tuple[tuple[int, ...], torch.dtype, torch.device]]]:
    """Within the block, every draw of ``sample_eps`` is listed (shape, dtype, device), in order."""
    _RECORD.append([])
    try:
        yield _RECORD[-1]
    finally:
        _RECORD.pop()


def sample_eps(mu: Tensor, samples: int, gen: torch.Generator | None) -> Tensor:
    """eps^(l) ~ N(0, I), shape [L, B, J] (or the noise given to ``fixed_noise`` or ``supplied_noise``)."""
    if _SUPPLY:
        eps = _SUPPLY.pop(0)
        if tuple(eps.shape) != (samples, *mu.shape):
            raise ValueError(f"supplied noise of shape {tuple(eps.shape)}, but the estimator draws "
                             f"{(samples, *mu.shape)}")
        return eps
    fixed = _FIXED.get()
    if fixed is not None:
        if tuple(fixed.shape) != (samples, *mu.shape):
            raise ValueError(f"fixed noise of shape {tuple(fixed.shape)}, but the estimator draws "
                             f"{(samples, *mu.shape)}")
        return fixed
    eps = torch.randn((samples, *mu.shape), generator=gen, device=mu.device, dtype=mu.dtype)
    if _RECORD:
        _RECORD[-1].append((tuple(eps.shape), eps.dtype, eps.device))
    return eps


def analytic_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || p(z)) = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)   (seed, Appendix A)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def log_normal_std(z: Tensor) -> Tensor:
    """log p(z) = -J/2 log 2pi - 1/2 sum_j z_j^2."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def log_q(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log q(z|x) = -J/2 log 2pi - 1/2 sum_j (log sigma_j^2 + (z_j - mu_j)^2 / sigma_j^2)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


@dataclass
class Weights:
    """L reparameterised draws for a minibatch: log p(x|z_l) and log p(z_l) - log q(z_l|x), each [L, B]."""

    log_px_z: Tensor
    log_pz_minus_log_qz: Tensor

    @property
    def log_w(self) -> Tensor:
        """log w_l = log p(x, z_l) - log q(z_l|x), [L, B]."""
        return self.log_px_z + self.log_pz_minus_log_qz


@dataclass
class Draw:
    """One minibatch's encoder pass and L reparameterised draws z = mu + sigma * eps ([L, B, J])."""

    x: Tensor
    mu: Tensor
    logvar: Tensor
    eps: Tensor
    z: Tensor


def draw(model: torch.nn.Module, x: Tensor, samples: int, gen: torch.Generator | None) -> Draw:
    mu, logvar = model.encode(x)
    eps = sample_eps(mu, samples, gen)
    return Draw(x, mu, logvar, eps, mu + torch.exp(0.5 * logvar) * eps)


def weights(model: torch.nn.Module, d: Draw, path: bool = False) -> Weights:
    """The draws' log weights, differentiable in theta and phi.

    ``path``: log q(z|x) is evaluated with sg(mu), sg(sigma), so phi's gradient is the path derivative alone
    (through z), the score term grad_phi log q(z|x) at fixed z dropped (Roeder et al. 2017); same value.
    """
    log_px_z = model.likelihood.log_prob(d.x, model.decode(d.z))
    if path:
        log_qz = log_q(d.z, d.mu.detach(), d.logvar.detach())
    else:
        # At z = mu + sigma*eps, (z - mu) / sigma == eps: the same value and gradient in phi as log_q(z, mu, logvar).
        log_qz = -0.5 * (LOG_2PI + d.logvar + d.eps.pow(2)).sum(-1)
    return Weights(log_px_z, log_normal_std(d.z) - log_qz)


def decoder_weights(model: torch.nn.Module, d: Draw, like: Weights) -> Weights:
    """The same log weights with only theta differentiable (a second decoder pass at sg(z)); ``like`` gives the
    part that does not depend on theta."""
    return Weights(model.likelihood.log_prob(d.x, model.decode(d.z.detach())), like.log_pz_minus_log_qz.detach())


def log_weights(model: torch.nn.Module, x: Tensor, samples: int, gen: torch.Generator | None,
                path: bool = False) -> Weights:
    """``weights`` of a fresh draw."""
    return weights(model, draw(model, x, samples, gen), path)


def with_value(surrogate: Tensor, value: Tensor) -> Tensor:
    """``surrogate``'s gradient with ``value``'s value: what the harness logs is then the bound, whatever it follows."""
    return surrogate + (value - surrogate).detach()
