"""log p(x) of a 2-D-latent model by quadrature on a grid: the exact value AIS is checked against.

    log p(x) = log int p(x|z) p(z) dz  ~  logsumexp_g [log p(x|z_g) + log p(z_g)] + log(h^2)

over a square grid z_g of spacing h on [-lim, lim]^2 (the prior N(0, I) leaves e^-18 of its mass outside [-6, 6]^2
per axis). The grid is decoded once for all images; log p(x|z_g) for every (image, grid point) is then one GEMM:
Bernoulli sum_d x_d l_d - softplus(l_d) = x . l - 1 . softplus(l); Gaussian -(|x|^2 - 2 x . m + |m|^2) / 2c - D/2
log 2 pi c.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from variants.terms import log_normal_std


def _log_px_z(lik: nn.Module, x: Tensor, params: Tensor) -> Tensor:
    """log p(x_i | z_g) for images x [N, D] and decoded grid points params [G, D]: [N, G], float64."""
    x, params = x.double(), params.double()
    if getattr(lik, "name", "") == "bernoulli":
        return x @ params.T - F.softplus(params).sum(-1)
    if hasattr(lik, "variance"):
        c, d = lik.variance, x.shape[-1]
        sq = x.pow(2).sum(-1, keepdim=True) - 2 * x @ params.T + params.pow(2).sum(-1)
        return -0.5 * sq / c - 0.5 * d * math.log(2 * math.pi * c)
    raise ValueError(f"quadrature supports the Bernoulli and Gaussian decoders, not {type(lik).__name__}")


def log_px_grid(model: nn.Module, x: Tensor, n: int = 400, lim: float = 6.0, chunk: int = 8000) -> Tensor:
    """log p(x) per image of x [N, D] (float64 [N]) on an n x n grid over [-lim, lim]^2 (cell centres)."""
    if model.latent != 2:
        raise ValueError(f"quadrature needs a 2-D latent, the model has {model.latent}")
    h = 2 * lim / n
    t = -lim + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    z = torch.cartesian_prod(t, t)
    acc = torch.full((len(x),), -math.inf, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(z), chunk):
            zc = z[i:i + chunk]
            params = model.decode(zc.to(x.device, torch.float32))
            lj = _log_px_z(model.likelihood, x, params).cpu() + log_normal_std(zc)
            acc = torch.logaddexp(acc, torch.logsumexp(lj, dim=1))
    return acc + 2 * math.log(h)
