"""The inference gap split in two (Cremer, Li & Duvenaud 2018, "Inference suboptimality in VAEs").

The seed's identity log p(x) = ELBO[q] + KL(q(z|x) || p(z|x)) with q the encoder, and with q* the best Gaussian of
the encoder's family for this one image (diagonal, found by optimisation), splits the encoder's gap as

    log p(x) - ELBO[q_enc] = (ELBO[q*] - ELBO[q_enc])  +  (log p(x) - ELBO[q*])
                             amortization gap              approximation gap = KL(q* || p(z|x))

ELBO[q] = E_q[log p(x|z)] - KL(q || p(z)), the KL in closed form (seed, Appendix B) and the expectation over S
reparameterised draws z = mu + sigma eps. q* starts at the encoder's (mu, log sigma^2) and takes a fixed number of
Adam steps on a few-sample estimate of -ELBO, per image (the images are independent: one summed loss).
log p(x) comes from AIS (bench.evaluation.ais).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bench.core import interrupts
from bench.evaluation import defaults
from bench.evaluation.ais import restores_grad_flags
from variants.terms import analytic_kl

GAP_SEED = 7000
ELBO_SAMPLES = 1000  # draws per image for the reported ELBOs: a standard error of ~0.01-0.1 nats per image
OPT_STEPS = defaults.GAP_STEPS
OPT_SAMPLES = 16  # draws per Adam step
OPT_LR = 0.05  # with the linear decay: 0.02 nats above the closed-form KL on the linear-Gaussian test (0.01: 0.1)
ROWS = 4000


def elbo(model: nn.Module, x: Tensor, mu: Tensor, logvar: Tensor, samples: int, gen: torch.Generator,
         rows: int = ROWS) -> tuple[Tensor, Tensor]:
    """ELBO[N(mu, diag e^logvar)] per image of x [B, D], and its Monte Carlo variance (over the draws, / S)."""
    sums = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    sq = torch.zeros_like(sums)
    per = max(1, rows // len(x))
    with torch.no_grad():
        for k in range(0, samples, per):
            n = min(per, samples - k)
            eps = torch.randn((n, *mu.shape), generator=gen, device=x.device)
            z = mu + torch.exp(0.5 * logvar) * eps
            params = model.decode(z.reshape(-1, mu.shape[-1])).view(n, len(x), -1)
            ll = model.likelihood.log_prob(x, params).double()
            sums += ll.sum(0)
            sq += ll.pow(2).sum(0)
    mean = sums / samples
    var = (sq / samples - mean.pow(2)).clamp_min(0) / samples
    return mean - analytic_kl(mu.double(), logvar.double()), var


@restores_grad_flags
def optimise_q(model: nn.Module, x: Tensor, mu: Tensor, logvar: Tensor, steps: int = OPT_STEPS,
               samples: int = OPT_SAMPLES, lr: float = OPT_LR, gen: torch.Generator | None = None,
               progress: bool = False) -> tuple[Tensor, Tensor]:
    """q* = argmax ELBO over a diagonal Gaussian per image, from (mu, logvar), by Adam with a learning rate decaying
    linearly to 0: (mu*, logvar*)."""
    m = mu.detach().clone().requires_grad_(True)
    lv = logvar.detach().clone().requires_grad_(True)
    with interrupts.critical():  # the process's first optimiser imports torch._dynamo: no signal inside an import
        opt = torch.optim.Adam([m, lv], lr=lr)
    # lr decays linearly to 0: with a noisy gradient a constant lr leaves q* jittering around the optimum,
    # an excess KL of the order of lr (measured: 0.08 nats on the linear-Gaussian test model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    with torch.enable_grad():
        for _ in tqdm(range(steps), desc="q* (Adam)", disable=not progress, leave=False, dynamic_ncols=True):
            eps = torch.randn((samples, *m.shape), generator=gen, device=x.device)
            z = m + torch.exp(0.5 * lv) * eps
            params = model.decode(z.reshape(-1, m.shape[-1])).view(samples, len(x), -1)
            loss = -(model.likelihood.log_prob(x, params).mean(0) - analytic_kl(m, lv)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return m.detach(), lv.detach()


@dataclass(frozen=True)
class GapResult:
    elbo_encoder: Tensor  # per image [N], float64
    elbo_optimised: Tensor
    log_px: Tensor  # AIS
    elbo_encoder_var: Tensor  # per image: the Monte Carlo variance of each ELBO estimate (S draws)
    elbo_optimised_var: Tensor

    @staticmethod
    def _mean_se(v: Tensor) -> tuple[float, float]:
        n = len(v)
        return float(v.mean()), float(v.std() / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def amortization(self) -> Tensor:
        return self.elbo_optimised - self.elbo_encoder

    @property
    def approximation(self) -> Tensor:
        return self.log_px - self.elbo_optimised

    def metrics(self) -> dict[str, float]:
        """Means over the images with their standard errors (the images' spread, as for test_nll)."""
        out: dict[str, float] = {}
        for name, v in (("gap/amortization", self.amortization), ("gap/approximation", self.approximation),
                        ("elbo/encoder", self.elbo_encoder), ("elbo/optimised", self.elbo_optimised)):
            out[name], out[f"{name}_stderr"] = self._mean_se(v)
        return out


def gaps(model: nn.Module, x: Tensor, log_px: Tensor, steps: int = OPT_STEPS, samples: int = ELBO_SAMPLES,
         seed: int = GAP_SEED, progress: bool = False, block: int = 500) -> GapResult:
    """ELBO[q_enc], ELBO[q*] and the two gaps against ``log_px`` (AIS, per image) for the images x [N, D]."""
    model.eval()
    enc, opt = [], []
    for k, i in enumerate(range(0, len(x), block)):
        xb = x[i:i + block]
        gen = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + k)
        with torch.no_grad():
            mu, logvar = model.encode(xb)
        enc.append(elbo(model, xb, mu, logvar, samples, gen))
        mu_s, lv_s = optimise_q(model, xb, mu, logvar, steps, gen=gen, progress=progress)
        opt.append(elbo(model, xb, mu_s, lv_s, samples, gen))
    return GapResult(torch.cat([e[0] for e in enc]).cpu(), torch.cat([o[0] for o in opt]).cpu(),
                     log_px.double().cpu(), torch.cat([e[1] for e in enc]).cpu(), torch.cat([o[1] for o in opt]).cpu())
