"""The importance-weighted family: IWAE, its STL and DReG gradients, and Rainforth et al.'s MIWAE, PIWAE, CIWAE.

With K reparameterised draws z_k = mu + sigma * eps_k, log weights log w_k = log p(x, z_k) - log q(z_k|x) and
normalised weights w~_k = w_k / sum_j w_j (variants.terms for the notation):

    IWAE bound  L_K(x) = log 1/K sum_k w_k          (Burda, Grosse & Salakhutdinov 2015; K = 1 is SGVB A)

The bound does not split into reconstruction and KL: ``recon`` is the mean -log p(x|z_k) and ``kld`` the rest,
so loss = recon + kld = -bound. Where theta (decoder) and phi (encoder) follow different gradients, the
``surrogate`` adds a theta-only term (a second decoder pass at sg(z): terms.decoder_weights) and a phi-only term
(the first pass minus its theta part), except DReG's, which gets both from one pass (a gradient hook on z); its
value is set to the loss (terms.with_value).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from variants.terms import Draw, LossTerms, Weights, decoder_weights, draw, log_weights, weights, with_value


def _lse_mean(log_w: Tensor, dim: int = 0) -> Tensor:
    """log 1/K sum_k exp(log_w_k) along ``dim``."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def _terms(w: Weights, bound: Tensor, surrogate: Tensor | None = None) -> LossTerms:
    recon = -w.log_px_z.mean(0)
    return LossTerms(recon=recon, kld=-bound - recon,
                     surrogate=None if surrogate is None else with_value(-surrogate, -bound))


def iwae(model: torch.nn.Module, x: Tensor, samples: int = 1, gen: torch.Generator | None = None) -> LossTerms:
    """Burda et al. 2015, "Importance Weighted Autoencoders": L_K(x) = log 1/K sum_k p(x, z_k) / q(z_k|x).

    Gradient: sum_k w~_k grad log w_k for theta and phi (through z_k and through q's parameters)."""
    w = log_weights(model, x, samples, gen)
    return _terms(w, _lse_mean(w.log_w))


def iwae_stl(model: torch.nn.Module, x: Tensor, samples: int = 1, gen: torch.Generator | None = None) -> LossTerms:
    """IWAE with sticking the landing (Roeder, Wu & Duvenaud 2017): L_K's value; phi's gradient drops the score
    term of every log w_k:

        grad_phi = sum_k w~_k d/dz [log p(x, z) - log q_{sg(phi)}(z|x)]_{z_k} dz_k/dphi.

    BIASED for K > 1 (Tucker, Lawson, Gu & Maddison 2018, section 3): the dropped term sum_k w~_k grad_phi log q
    does not have expectation zero once weighted by w~_k. K = 1 is SGVB A with STL (unbiased). theta: IWAE's."""
    w = log_weights(model, x, samples, gen, path=True)
    return _terms(w, _lse_mean(w.log_w))


def iwae_dreg(model: torch.nn.Module, x: Tensor, samples: int = 1, gen: torch.Generator | None = None) -> LossTerms:
    """Doubly reparameterized gradient (Tucker, Lawson, Gu & Maddison 2018, "Doubly Reparameterized Gradient
    Estimators for Monte Carlo Objectives"): L_K's value; phi's gradient

        grad_phi = sum_k w~_k^2 d/dz [log p(x, z) - log q_{sg(phi)}(z|x)]_{z_k} dz_k/dphi,

    unbiased for grad_phi L_K (the score terms reparameterised a second time), its SNR growing with K where
    IWAE's falls. theta's gradient is IWAE's, sum_k w~_k grad_theta log p(x|z_k).

    One decoder pass: log w_k at z_k = mu + sigma * eps_k with log q at sg(mu), sg(sigma), and the surrogate
    S = sum_k sg(w~_k) log w_k. Its theta gradient is IWAE's as it stands; its phi gradient reaches z_k as
    w~_k d log w_k/dz, and a gradient hook on z multiplies it by w~_k once more (every op between z_k and
    log w_k acts on sample k alone, so scaling z_k's incoming gradient scales exactly sample k's path term).
    Only ``objective`` may be differentiated (the hook is on the shared graph). Under torch.func transforms
    (gradvar's vmap of grad), where a tensor hook cannot be used, the two-pass form (_iwae_dreg_two_pass) runs.
    """
    d = draw(model, x, samples, gen)
    if not d.z.requires_grad or torch._C._are_functorch_transforms_active():
        return _iwae_dreg_two_pass(model, d)
    w = weights(model, d, path=True)
    wt = torch.softmax(w.log_w.detach(), dim=0)  # [K, B], the normalised weights w~_k
    d.z.register_hook(lambda g: g * wt.unsqueeze(-1).to(g.dtype))
    return _terms(w, _lse_mean(w.log_w), (wt * w.log_w).sum(0))


def _iwae_dreg_two_pass(model: torch.nn.Module, d: Draw) -> LossTerms:
    """DReG with a second decoder pass at sg(z) for theta (the form before the hook; same gradients):

        S = L_K(theta at sg(z)) + sum_k sg(w~_k^2) [log w_k - log w_k(theta at sg(z))]."""
    w = weights(model, d, path=True)
    w_theta = decoder_weights(model, d, w)
    wt2 = torch.softmax(w.log_w.detach(), dim=0).pow(2)
    surrogate = _lse_mean(w_theta.log_w) + (wt2 * (w.log_w - w_theta.log_w)).sum(0)
    return _terms(w, _lse_mean(w.log_w), surrogate)


def _groups(log_w: Tensor, groups: int) -> Tensor:
    """[M*K, B] -> [M, K, B]: M independent IWAE estimates of K draws each."""
    if groups < 1 or log_w.shape[0] % groups:
        raise ValueError(f"groups must divide the draws: {log_w.shape[0]} draws, {groups} groups")
    return log_w.reshape(groups, log_w.shape[0] // groups, *log_w.shape[1:])


def miwae(model: torch.nn.Module, x: Tensor, samples: int = 1, gen: torch.Generator | None = None,
          groups: int = 1) -> LossTerms:
    """MIWAE(M, K) (Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh 2018, "Tighter Variational Bounds are Not
    Necessarily Better"): the mean of M = ``groups`` IWAE bounds of K = ``samples`` draws each,

        L_{M,K}(x) = 1/M sum_m log 1/K sum_k w_{m,k},      M*K draws per datapoint,

    for both networks. M = 1 is IWAE; K = 1 is SGVB A with M samples."""
    w = log_weights(model, x, samples * groups, gen)
    return _terms(w, _lse_mean(_groups(w.log_w, groups), dim=1).mean(0))


def piwae(model: torch.nn.Module, x: Tensor, samples: int = 1, gen: torch.Generator | None = None,
          groups: int = 1) -> LossTerms:
    """PIWAE(M, K) (Rainforth et al. 2018): the generative network follows the IWAE bound of all M*K
    draws, the inference network MIWAE(M, K) on the same draws:

        grad_theta L_{MK}(x),   L_{MK}(x) = log 1/(MK) sum_{m,k} w_{m,k}       (the bound logged as the loss)
        grad_phi   1/M sum_m log 1/K sum_k w_{m,k}.
    """
    d = draw(model, x, samples * groups, gen)
    w = weights(model, d)
    w_theta = decoder_weights(model, d, w)

    def miwae_bound(log_w: Tensor) -> Tensor:
        return _lse_mean(_groups(log_w, groups), dim=1).mean(0)

    surrogate = _lse_mean(w_theta.log_w) + miwae_bound(w.log_w) - miwae_bound(w_theta.log_w)
    return _terms(w, _lse_mean(w.log_w), surrogate)


def ciwae(model: torch.nn.Module, x: Tensor, samples: int = 1, gen: torch.Generator | None = None,
          beta: float = 0.5) -> LossTerms:
    """CIWAE(beta) (Rainforth et al. 2018): a convex combination of the K-sample ELBO and the IWAE bound on
    the same K draws, for both networks,

        L_beta(x) = beta * 1/K sum_k log w_k + (1 - beta) * log 1/K sum_k w_k,   0 <= beta <= 1.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    w = log_weights(model, x, samples, gen)
    return _terms(w, beta * w.log_w.mean(0) + (1 - beta) * _lse_mean(w.log_w))
