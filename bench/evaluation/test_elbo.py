"""The per-epoch test metrics every variant is scored on, computed the same way for all of them."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.core.devices import accumulation_dtype
from bench.core.rng import TEST_NOISE, generator
from variants.estimators import analytic_kl
from variants.model import VAE

EVAL_SEED = 20140101  # one fixed noise draw for every variant's test metrics: runs compare on equal terms


@torch.inference_mode()
def evaluate_test(model: VAE, x: Tensor, batch_size: int = 2000) -> dict[str, float]:
    """test_loss/recon/kld (analytic KL, one reparameterised sample, fixed seed) and test_mse.

    test_mse is the squared error of the decoder's mean, averaged over pixels and images: the scale on
    which a Bernoulli and a Gaussian decoder compare.
    """
    gen = generator(x.device, TEST_NOISE, EVAL_SEED)
    sums = torch.zeros(3, dtype=accumulation_dtype(x.device), device=x.device)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        mu, logvar = model.encode(xb)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, device=x.device)
        params = model.decode(z)
        recon = -model.likelihood.log_prob(xb, params)
        mse = (xb - model.likelihood.mean(params)).pow(2).mean(-1)
        sums += torch.stack((recon.sum(), analytic_kl(mu, logvar).sum(), mse.sum())).to(sums.dtype)
    recon, kld, mse = (sums / len(x)).tolist()
    return {"test_loss": recon + kld, "test_recon": recon, "test_kld": kld, "test_mse": mse}
