"""ELBO estimators: (model, x, L) -> per-datapoint loss terms, each with the seed's equation.

Notation (seed, Kingma & Welling 2014): q(z|x) = N(mu, sigma^2 I), p(z) = N(0, I), J latent dims,
z^(l) = g(eps^(l), x) = mu + sigma * eps^(l), eps^(l) ~ N(0, I), l = 1..L.

Every estimator returns ``LossTerms`` with tensors of shape [B] (one value per datapoint, in nats):
``recon`` (the sampled -log p(x|z) part), ``kld`` (the rest), and ``loss = recon + kld = -ELBO
estimate``. ``surrogate`` is set when the gradient to follow is not the gradient of ``loss`` (the
score-function estimator); ``objective`` is what the harness differentiates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from variants.model import VAE

LOG_2PI = math.log(2 * math.pi)


@dataclass
class LossTerms:
    recon: Tensor
    kld: Tensor
    surrogate: Tensor | None = None

    @property
    def loss(self) -> Tensor:
        return self.recon + self.kld

    @property
    def objective(self) -> Tensor:
        return self.loss if self.surrogate is None else self.surrogate


def sample_eps(mu: Tensor, samples: int, gen: torch.Generator | None) -> Tensor:
    """eps^(l) ~ N(0, I), shape [L, B, J]."""
    return torch.randn((samples, *mu.shape), generator=gen, device=mu.device, dtype=mu.dtype)


def analytic_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || p(z)) = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)   (seed, Appendix A)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def log_normal_std(z: Tensor) -> Tensor:
    """log p(z) = -J/2 log 2pi - 1/2 sum_j z_j^2."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def log_q(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log q(z|x) = -J/2 log 2pi - 1/2 sum_j (log sigma_j^2 + (z_j - mu_j)^2 / sigma_j^2)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def _log_weights(model: VAE, x: Tensor, samples: int, gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """log p(x|z_l) and log p(z_l) - log q(z_l|x) for L reparameterised samples: two [L, B] tensors."""
    mu, logvar = model.encode(x)
    eps = sample_eps(mu, samples, gen)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_px_z = model.likelihood.log_prob(x, model.decode(z))
    # log q(z|x) at z = mu + sigma*eps is -J/2 log 2pi - 1/2 sum_j (log sigma_j^2 + eps_j^2): the same
    # value and the same gradient in phi as log_q(z, mu, logvar), since (z - mu) / sigma == eps.
    log_qz = -0.5 * (LOG_2PI + logvar + eps.pow(2)).sum(-1)
    return log_px_z, log_normal_std(z) - log_qz


def sgvb_a(model: VAE, x: Tensor, samples: int = 1, gen: torch.Generator | None = None) -> LossTerms:
    """L^A(x) = 1/L sum_l [log p(x, z^(l)) - log q(z^(l)|x)]: every term sampled."""
    log_px_z, log_pz_minus_log_qz = _log_weights(model, x, samples, gen)
    return LossTerms(recon=-log_px_z.mean(0), kld=-log_pz_minus_log_qz.mean(0))


def sgvb_b(model: VAE, x: Tensor, samples: int = 1, gen: torch.Generator | None = None) -> LossTerms:
    """L^B(x) = -KL(q(z|x) || p(z)) + 1/L sum_l log p(x | z^(l)): the KL in closed form."""
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * sample_eps(mu, samples, gen)
    log_px_z = model.likelihood.log_prob(x, model.decode(z))
    return LossTerms(recon=-log_px_z.mean(0), kld=analytic_kl(mu, logvar))


def score_function(
    model: VAE, x: Tensor, samples: int = 1, gen: torch.Generator | None = None, baseline: bool = False
) -> LossTerms:
    """The seed's naive Monte Carlo gradient (REINFORCE) of E_q[f(z)], f(z) = log p(x|z):

        grad_phi E_q[f(z)] ~= 1/L sum_l f(z^(l)) grad_phi log q(z^(l)|x),   z^(l) ~ q(z|x), not reparameterised.

    The KL is closed-form (as in B), so the value is L^B and only the gradient path differs. The decoder
    gets its usual gradient. With ``baseline``, f - b, b = the leave-one-out mean of f over the other
    samples (L > 1) or the other datapoints of the minibatch (L = 1), which leaves the estimator unbiased.
    """
    mu, logvar = model.encode(x)
    with torch.no_grad():
        z = mu + torch.exp(0.5 * logvar) * sample_eps(mu, samples, gen)
    log_px_z = model.likelihood.log_prob(x, model.decode(z))  # [L, B], gradient for theta only
    kld = analytic_kl(mu, logvar)
    f = log_px_z.detach()
    if baseline:
        axis = 0 if samples > 1 else 1
        n = f.shape[axis]
        if n > 1:
            f = f - (f.sum(axis, keepdim=True) - f) / (n - 1)
    surrogate = -log_px_z.mean(0) - (f * log_q(z, mu, logvar)).mean(0) + kld
    return LossTerms(recon=-log_px_z.mean(0), kld=kld, surrogate=surrogate)


def iwae(model: VAE, x: Tensor, samples: int = 1, gen: torch.Generator | None = None) -> LossTerms:
    """Burda et al. 2015: L_k(x) = log 1/k sum_k p(x, z_k) / q(z_k|x), z_k reparameterised.

    The bound does not split into reconstruction and KL; ``recon`` is the mean -log p(x|z_k) and ``kld``
    the rest, so loss = recon + kld still holds. With k = 1 this is exactly SGVB A.
    """
    log_px_z, log_pz_minus_log_qz = _log_weights(model, x, samples, gen)
    log_w = log_px_z + log_pz_minus_log_qz
    bound = torch.logsumexp(log_w, dim=0) - math.log(samples)
    recon = -log_px_z.mean(0)
    return LossTerms(recon=recon, kld=-bound - recon)


Estimator = Callable[..., LossTerms]
ESTIMATORS: dict[str, Estimator] = {
    "sgvb_a": sgvb_a,
    "sgvb_b": sgvb_b,
    "score_function": score_function,
    "iwae": iwae,
}
