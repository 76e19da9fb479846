"""ELBO estimators: (model, x, L, gen, **options) -> per-datapoint loss terms, each with its equation and paper.

The building blocks (LossTerms, the noise, the log densities, the notation) are in variants.terms; the
importance-weighted family (IWAE, IWAE-STL, IWAE-DReG, MIWAE, PIWAE, CIWAE) in variants.importance.
An estimator's keyword options (``baseline``, ``groups``, ``beta``) are the variant axes it is given
(variants.registry passes exactly the ones its signature names).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from variants.importance import ciwae, iwae, iwae_dreg, iwae_stl, miwae, piwae
from variants.model import VAE
from variants.terms import (  # noqa: F401  (re-exported: the estimators' building blocks)
    LOG_2PI,
    LossTerms,
    analytic_kl,
    fixed_noise,
    log_normal_std,
    log_q,
    log_weights,
    sample_eps,
)


def sgvb_a(model: VAE, x: Tensor, samples: int = 1, gen: torch.Generator | None = None) -> LossTerms:
    """L^A(x) = 1/L sum_l [log p(x, z^(l)) - log q(z^(l)|x)]: every term sampled."""
    w = log_weights(model, x, samples, gen)
    return LossTerms(recon=-w.log_px_z.mean(0), kld=-w.log_pz_minus_log_qz.mean(0))


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


def sgvb_a_stl(model: VAE, x: Tensor, samples: int = 1, gen: torch.Generator | None = None) -> LossTerms:
    """Sticking the landing (Roeder, Wu & Duvenaud 2017, "Sticking the Landing: Simple, Lower-Variance Gradient
    Estimators for Variational Inference"): SGVB A's value, with the score term dropped from phi's gradient:

        L^A(x) = 1/L sum_l [log p(x, z_l) - log q_{sg(phi)}(z_l|x)],   z_l = mu + sigma * eps_l,
        grad_phi = 1/L sum_l d/dz [log p(x, z) - log q_{sg(phi)}(z|x)]_{z_l} dz_l/dphi.

    The dropped term, -grad_phi log q(z|x) at fixed z, has expectation zero, so the gradient stays unbiased for
    the ELBO; it is zero-variance when q(z|x) is the exact posterior. theta's gradient is A's.
    """
    w = log_weights(model, x, samples, gen, path=True)
    return LossTerms(recon=-w.log_px_z.mean(0), kld=-w.log_pz_minus_log_qz.mean(0))


Estimator = Callable[..., LossTerms]
ESTIMATORS: dict[str, Estimator] = {
    "sgvb_a": sgvb_a,
    "sgvb_b": sgvb_b,
    "score_function": score_function,
    "sgvb_a_stl": sgvb_a_stl,
    "iwae": iwae,
    "iwae_stl": iwae_stl,
    "iwae_dreg": iwae_dreg,
    "miwae": miwae,
    "piwae": piwae,
    "ciwae": ciwae,
}
