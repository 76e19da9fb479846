"""Many noise draws of an estimator's gradient at once: the draws are a batch dimension (torch.func.vmap over
torch.func.grad), not a Python loop of backward passes. Shared by gradvar (bench.evaluate --gradient-variance),
snr (python -m bench.snr) and the SNR logged during training.

For an estimator e and a minibatch x of M datapoints, one draw is the gradient g = grad (1/M sum_i objective_e(x_i))
at fixed parameters, its noise eps drawn up front from one seeded generator (variants.terms.fixed_noise hands
each draw its slice). Draws are taken in chunks sized to bound memory; each chunk's gradients are reduced at once
into per-parameter sums, kept per group of draws for the jackknife: sums of g - ref (ref = the first chunk's mean,
so that sum g^2 - R mean^2 does not cancel when |E g| >> std g), in float32 within a chunk (a [G, chunk] x
[chunk, P] product) and float64 across chunks (float32 on mps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from bench.core.devices import accumulation_dtype
from variants.registry import Variant
from variants.terms import fixed_noise

MAX_ROWS = 8192  # decoder rows (draws x samples x images) per chunk: ~200 MB of activations at 784-400
MAX_DRAWS = 32  # draws per chunk: their gradients are held at once ([draws, parameters])
PARTS = ("encoder", "decoder")


@dataclass
class Moments:
    """Per-parameter sums of one network's gradient draws: s1, s2 = sum (g - ref), sum (g - ref)^2, per group of
    draws [G, P]."""

    s1: Tensor
    s2: Tensor
    count: Tensor  # [G] draws per group
    ref: Tensor  # [P] the shift

    def summary(self, leave_out: int | None = None) -> dict[str, float]:
        """Over all draws (or all but group ``leave_out``): ``variance`` = sum_p Var(g_p); ``snr`` = ||E g||^2 / V
        (||E g||^2 estimated without bias as ||g_bar||^2 - V / R); ``snr_param`` = the mean over parameters of
        |E g_p| / std(g_p) (Rainforth et al. 2018), over the parameters whose gradient varies; ``snr_param_debiased``
        = its floor-free counterpart (``debiased_snr``)."""
        keep = torch.ones(len(self.count), dtype=torch.bool, device=self.s1.device)
        if leave_out is not None:
            keep[leave_out] = False
        r = float(self.count[keep].sum())
        s1, s2 = self.s1[keep].sum(0), self.s2[keep].sum(0)
        shifted = s1 / r
        var_p = ((s2 - r * shifted * shifted) / (r - 1)).clamp_min(0)
        mean = shifted + self.ref
        var = float(var_p.sum())
        signal = float(mean.pow(2).sum()) - var / r
        varies = var_p > 0
        snr_param = float((mean[varies].abs() / var_p[varies].sqrt()).mean()) if bool(varies.any()) else float("nan")
        return {"variance": var, "snr": signal / var if var > 0 else float("inf"), "snr_param": snr_param,
                "snr_param_debiased": debiased_snr(mean[varies], var_p[varies], r)}


def debiased_snr(mean: Tensor, var: Tensor, r: float) -> float:
    """Root-mean-square per-parameter SNR without the noise floor of |g_bar| / s.

    With R draws, g_bar_p ~ N(mu_p, sigma_p^2 / R) and (R - 1) s_p^2 / sigma_p^2 ~ chi2(R - 1), independent, so
    E g_bar^2 = mu^2 + sigma^2 / R and E 1 / s^2 = (R - 1) / ((R - 3) sigma^2); hence

        rho2_p = (R - 3) / (R - 1) * g_bar_p^2 / s_p^2 - 1 / R      has E rho2_p = mu_p^2 / sigma_p^2

    (Gaussian draws; for others the correction is first-order). |g_bar| / s does not fall much below
    sqrt(2 / (pi R)) when mu = 0 (0.08 at R = 100); rho2 averages to 0 there. The estimate is
    sqrt(max(0, mean_p rho2_p)): the RMS over parameters of mu_p / sigma_p, which for parameters sharing one law
    SNR ~ K^a falls with the same slope a. NaN when R <= 3 or no parameter varies."""
    if r <= 3 or mean.numel() == 0:
        return float("nan")
    rho2 = (r - 3) / (r - 1) * mean.pow(2) / var - 1 / r
    return math.sqrt(max(0.0, float(rho2.mean())))


class _Objective(nn.Module):
    """The estimator's minibatch objective as a module of the model's parameters (for functional_call)."""

    def __init__(self, model: nn.Module, variant: Variant, x: Tensor) -> None:
        super().__init__()
        self.model, self.variant, self.x = model, variant, x

    def forward(self, eps: Tensor) -> Tensor:
        with fixed_noise(eps):
            return self.variant.estimate(self.model, self.x, None).objective.mean()


def parts(model: nn.Module) -> dict[str, list[str]]:
    """The trained parameters' names in functional_call's namespace, per network."""
    names = {id(p): f"model.{n}" for n, p in model.named_parameters()}
    return {"encoder": [names[id(p)] for p in model.encoder_parameters()],
            "decoder": [names[id(p)] for p in model.decoder_parameters()]}


def draw_noise(variant: Variant, x: Tensor, latent: int, repeats: int, seed: int) -> Tensor:
    """Every draw's eps, [R, draws per datapoint, M, J], from one generator seeded with ``seed``."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn((repeats, variant.draws(), len(x), latent), generator=gen, device=x.device)


def gradient_moments(model: nn.Module, x: Tensor, variant: Variant, repeats: int, seed: int,
                     groups: int = 1, max_rows: int = MAX_ROWS) -> dict[str, Moments]:
    """Encoder and decoder gradient moments of ``variant``'s estimator over ``repeats`` draws, kept in ``groups``
    groups of consecutive draws (for a jackknife)."""
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 to measure a variance, got {repeats}")
    was_training = model.training
    model.eval()
    objective = _Objective(model, variant, x)
    names = parts(model)
    params = {n: p.detach() for n, p in objective.named_parameters() if p.requires_grad}
    eps = draw_noise(variant, x, model.latent, repeats, seed)
    per_draw = vmap(grad(lambda p, e: functional_call(objective, p, (e,))), in_dims=(None, 0))
    dtype = accumulation_dtype(x.device)
    group_of = torch.arange(repeats, device=x.device) * groups // repeats
    chunk = max(1, min(MAX_DRAWS, max_rows // (variant.draws() * len(x))))
    sums: dict[str, tuple[Tensor, Tensor]] = {}
    refs: dict[str, Tensor] = {}
    with torch.enable_grad():
        for i in range(0, repeats, chunk):
            g = per_draw(params, eps[i:i + chunk])
            c = len(g[next(iter(g))])
            onehot = torch.zeros(groups, c, device=x.device)
            onehot[group_of[i:i + c], torch.arange(c, device=x.device)] = 1.0
            for n, gn in g.items():
                gn = gn.reshape(c, -1)
                if n not in refs:
                    refs[n] = gn.mean(0)
                    sums[n] = (torch.zeros(groups, gn.shape[1], dtype=dtype, device=x.device),
                               torch.zeros(groups, gn.shape[1], dtype=dtype, device=x.device))
                d = gn - refs[n]
                sums[n][0].add_(onehot @ d)
                sums[n][1].add_(onehot @ (d * d))
    count = torch.bincount(group_of, minlength=groups).to(dtype)
    out = {part: Moments(torch.cat([sums[n][0] for n in ns], 1), torch.cat([sums[n][1] for n in ns], 1), count,
                         torch.cat([refs[n] for n in ns]).to(dtype)) for part, ns in names.items()}
    model.train(was_training)
    return out
