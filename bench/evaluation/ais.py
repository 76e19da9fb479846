"""Annealed importance sampling (Neal 2001) of log p(x) for a decoder-based model, as in Wu et al. 2017 ("On the
quantitative analysis of decoder-based generative models"), with bidirectional Monte Carlo (Grosse et al. 2015).

Path. Intermediate densities between a normalised start p_0(z) and the unnormalised target p(x, z):

    f_t(z) = p_0(z)^(1 - beta_t) p(x, z)^beta_t,   0 = beta_0 < beta_1 < ... < beta_T = 1,

with p_0 = p(z) (the prior; then f_t = p(z) p(x|z)^beta_t) or p_0 = q(z|x) (the encoder). Z_0 = 1, Z_T = p(x).

Forward AIS. z_0 ~ p_0; for t = 1..T the weight takes the increment

    log w += log f_t(z_{t-1}) - log f_{t-1}(z_{t-1}) = (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log p_0(z_{t-1})]

and z_t = HMC_t(z_{t-1}), a transition that leaves f_t invariant. E[w] = Z_T / Z_0 = p(x), so with C chains per
image, log 1/C sum_c w_c is a stochastic lower bound on log p(x) (Jensen), tight as T grows.

Reverse AIS (BDMC). Started at an exact posterior sample z_T ~ p(z|x) (available for data simulated from the model,
z ~ p(z), x ~ p(x|z)), the same path run backwards: for t = T..1, log w += (beta_{t-1} - beta_t) [log p(x, z) -
log p_0(z)], then z = HMC_{t-1}(z). E[w] = Z_0 / Z_T = 1/p(x), so -log 1/C sum_c w_c is a stochastic upper bound.
Upper minus lower bounds the error of forward AIS on such data at those settings: the BDMC gap.

HMC (Neal 2011). Potential U(z) = -log f_t(z), momentum r ~ N(0, I), Hamiltonian H(z, r) = U(z) + |r|^2 / 2;
L leapfrog steps of size eps (r -= eps/2 dU; z += eps r; r -= eps/2 dU), then the Metropolis-Hastings test:
accept (z', r') with probability min(1, exp(H(z, r) - H(z', r'))). The step size eps is kept per image (shared by
its C chains) and adapted after every transition towards an acceptance rate of 0.65 (x1.02 above, x0.98 below),
as Wu et al. do; each transition is still f_t-invariant given the eps it uses.

Schedule (Grosse et al. 2013): sigmoidal, beta_t = (s(t) - s(0)) / (s(T) - s(0)), s(t) = sigmoid(delta (2t/T - 1)),
delta = 4: small steps near both ends, where log f_t changes fastest.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bench.core.allocator import keep_freed_memory
from bench.evaluation import defaults
from variants.terms import LOG_2PI, log_normal_std

_T = TypeVar("_T")

# The defaults live with the other evaluation defaults (bench.evaluation.defaults: --help loads without torch).
AIS_SEED = defaults.AIS_SEED
DEFAULT_STEPS = defaults.AIS_STEPS
DEFAULT_CHAINS = defaults.AIS_CHAINS
DEFAULT_IMAGES = defaults.AIS_IMAGES
DEFAULT_LEAPFROG = defaults.AIS_LEAPFROG
MAX_IMAGES = defaults.AIS_MAX_IMAGES
TARGET_ACCEPT = 0.65
ROWS = 4096  # chains (images x C) advanced together: decoder GEMMs of this many rows


def sigmoid_schedule(steps: int, delta: float = 4.0) -> Tensor:
    """beta_0 = 0 < ... < beta_T = 1 (float64 [T + 1]), sigmoidal in t (Grosse et al. 2013)."""
    if steps < 1:
        raise ValueError(f"the schedule needs at least one step, got {steps}")
    s = torch.sigmoid(delta * (2 * torch.arange(steps + 1, dtype=torch.float64) / steps - 1))
    return (s - s[0]) / (s[-1] - s[0])


def linear_schedule(steps: int) -> Tensor:
    if steps < 1:
        raise ValueError(f"the schedule needs at least one step, got {steps}")
    return torch.linspace(0, 1, steps + 1, dtype=torch.float64)


SCHEDULES: dict[str, Callable[[int], Tensor]] = {"sigmoid": sigmoid_schedule, "linear": linear_schedule}


@dataclass(frozen=True)
class AISSettings:
    steps: int = DEFAULT_STEPS
    chains: int = DEFAULT_CHAINS
    leapfrog: int = DEFAULT_LEAPFROG
    schedule: str = "sigmoid"
    start: str = "prior"  # or "encoder": p_0 = q(z|x)
    step_size: float = 0.05  # initial eps, then adapted
    seed: int = AIS_SEED

    def __post_init__(self) -> None:
        for name in ("steps", "chains", "leapfrog"):
            if getattr(self, name) < 1:
                raise ValueError(f"AIS {name} must be a positive integer, got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown AIS schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.start not in ("prior", "encoder"):
            raise ValueError(f"AIS start must be 'prior' or 'encoder', got {self.start!r}")

    def params(self, prefix: str = "ais") -> dict[str, object]:
        return {f"{prefix}_steps": self.steps, f"{prefix}_chains": self.chains, f"{prefix}_leapfrog": self.leapfrog,
                f"{prefix}_schedule": self.schedule, f"{prefix}_start": self.start, f"{prefix}_seed": self.seed}


class Target:
    """log p_0(z) and log p(x, z) for C chains of each of B images; z is [B, C, J]."""

    def __init__(self, model: nn.Module, x: Tensor, start: str) -> None:
        self.model, self.x = model, x[:, None]  # [B, 1, D]: broadcast against the chains
        self.mu = self.logvar = None
        if start == "encoder":
            with torch.no_grad():
                mu, logvar = model.encode(x)
            self.mu, self.logvar = mu[:, None].detach(), logvar[:, None].detach()

    def sample_start(self, chains: int, gen: torch.Generator) -> Tensor:
        b, j = self.x.shape[0], self.model.latent
        eps = torch.randn((b, chains, j), generator=gen, device=self.x.device)
        return eps if self.mu is None else self.mu + torch.exp(0.5 * self.logvar) * eps

    def log_start(self, z: Tensor) -> Tensor:
        if self.mu is None:
            return log_normal_std(z)
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu).pow(2) / self.logvar.exp()).sum(-1)

    def log_joint(self, z: Tensor) -> Tensor:
        b, c, j = z.shape
        params = self.model.decode(z.reshape(b * c, j))
        return self.model.likelihood.log_prob(self.x, params.view(b, c, -1)) + log_normal_std(z)

    def grad_log_start(self, z: Tensor) -> Tensor:
        return -z if self.mu is None else -(z - self.mu) / self.logvar.exp()


@dataclass
class State:
    """Chains at z [B, C, J]: log p_0, d = log p(x,z) - log p_0 and both gradients, so that log f_beta = log p_0 +
    beta d and its gradient are known at any beta without another decoder pass."""

    z: Tensor
    log0: Tensor
    diff: Tensor
    g0: Tensor
    gdiff: Tensor

    def log_f(self, beta: float) -> Tensor:
        return self.log0 + beta * self.diff

    def grad(self, beta: float) -> Tensor:
        return self.g0 + beta * self.gdiff


def evaluate(target: Target, z: Tensor) -> State:
    """The chains' State at z: one decoder pass forward and backward."""
    z = z.detach()
    with torch.enable_grad():
        zg = z.requires_grad_(True)
        log_t = target.log_joint(zg)
        (g_t,) = torch.autograd.grad(log_t.sum(), zg)
    z = z.detach()
    log0, g0 = target.log_start(z), target.grad_log_start(z)
    return State(z, log0, log_t.detach() - log0, g0, g_t - g0)


def _where(mask: Tensor, a: State, b: State) -> State:
    m = mask[..., None]
    return State(torch.where(m, a.z, b.z), torch.where(mask, a.log0, b.log0), torch.where(mask, a.diff, b.diff),
                 torch.where(m, a.g0, b.g0), torch.where(m, a.gdiff, b.gdiff))


def hmc_step(target: Target, s: State, beta: float, eps: Tensor | float, leapfrog: int,
             gen: torch.Generator) -> tuple[State, Tensor]:
    """One HMC transition leaving f_beta invariant, for every chain: (the new state, accepted as bool [B, C]).
    ``eps`` is [B, 1, 1] (per image) or a float."""
    r = torch.randn(s.z.shape, generator=gen, device=s.z.device)
    h0 = -s.log_f(beta) + 0.5 * r.pow(2).sum(-1)
    new = s
    r = r + 0.5 * eps * new.grad(beta)  # dU/dz = -grad log f
    for i in range(leapfrog):
        new = evaluate(target, new.z + eps * r)
        r = r + (eps if i < leapfrog - 1 else 0.5 * eps) * new.grad(beta)
    h1 = -new.log_f(beta) + 0.5 * r.pow(2).sum(-1)
    # MH test: accept with probability min(1, exp(H0 - H1)); a non-finite energy (divergence) is a rejection
    u = torch.rand(h0.shape, generator=gen, device=s.z.device)
    accept = (torch.log(u) < (h0 - h1)) & torch.isfinite(h1)
    return _where(accept, new, s), accept


@dataclass
class Chains:
    log_w: Tensor  # [B, C] log importance weights
    accept: float  # mean acceptance rate over all transitions


def run_ais(model: nn.Module, x: Tensor, settings: AISSettings, gen: torch.Generator, z0: Tensor | None = None,
            reverse: bool = False, tick: Callable[[int], None] | None = None) -> Chains:
    """Forward (z0 None: drawn from p_0) or reverse (z0 [B, C, J], exact posterior samples) AIS on images x [B, D].
    Returns the log weights: forward, E[w] = p(x); reverse, E[w] = 1/p(x)."""
    keep_freed_memory()  # each transition's [rows, 784] tensors reuse the heap (bench.core.allocator)
    target = Target(model, x, settings.start)
    betas = SCHEDULES[settings.schedule](settings.steps).tolist()
    z = target.sample_start(settings.chains, gen) if z0 is None else z0
    b = len(x)
    eps = torch.full((b, 1, 1), settings.step_size, device=x.device)
    log_w = torch.zeros(b, settings.chains, dtype=torch.float64, device=x.device)
    order = range(settings.steps, 0, -1) if reverse else range(1, settings.steps + 1)
    beta = betas[-1] if reverse else 0.0
    state = evaluate(target, z)
    accepted = torch.zeros((), device=x.device)  # summed on the device: no sync per transition
    for t in order:
        nxt = betas[t - 1] if reverse else betas[t]
        log_w += (nxt - beta) * state.diff.double()  # log f_next(z) - log f_now(z)
        beta = nxt
        state, acc = hmc_step(target, state, beta, eps, settings.leapfrog, gen)
        rate = acc.float().mean(1)[:, None, None]  # per image, over its chains
        eps = torch.where(rate > TARGET_ACCEPT, eps * 1.02, eps * 0.98).clamp(1e-4, 1.0)
        accepted += acc.float().mean()
        if tick is not None:
            tick(1)
    return Chains(log_w=log_w, accept=float(accepted) / settings.steps)


def log_mean_exp(log_w: Tensor) -> Tensor:
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])


def mc_variance(log_w: Tensor) -> Tensor:
    """Delta-method variance of log 1/C sum_c w_c per image: Var(w) / (C E[w]^2), from the normalised weights."""
    c = log_w.shape[-1]
    w = torch.exp(log_w - log_w.max(-1, keepdim=True).values)
    w = w / w.mean(-1, keepdim=True)
    return w.var(-1) / c if c > 1 else torch.full(w.shape[:-1], float("nan"), dtype=w.dtype)


@dataclass(frozen=True)
class AISResult:
    log_px: Tensor  # per image, float64 [N]: forward AIS, a stochastic lower bound
    mc_var: Tensor  # per image: the delta-method variance of that estimate over the chains
    accept: float

    @property
    def nll(self) -> float:
        return -float(self.log_px.mean())

    @property
    def stderr(self) -> float:
        """Standard error of the mean over the images (as test_nll_stderr: the test set's sampling)."""
        n = len(self.log_px)
        return float(self.log_px.std() / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def mc_stderr(self) -> float:
        """The estimator's own noise on the mean over the images (chains): sqrt(sum_i var_i) / N."""
        return float(self.mc_var.sum().sqrt() / len(self.mc_var))


def _blocks(n: int, chains: int) -> list[tuple[int, int]]:
    per = max(1, ROWS // chains)
    return [(i, min(n, i + per)) for i in range(0, n, per)]



def restores_grad_flags(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Run ``fn(model, ...)`` with the model's parameters frozen (these computations need gradients in z or in
    q's parameters only) and give each parameter back its requires_grad afterwards, whatever happens."""
    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> _T:
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            return fn(model, *args, **kwargs)
        finally:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
    return wrapper


def _gen(device: torch.device, seed: int, block: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + block)
    return g


@restores_grad_flags
def ais_log_likelihood(model: nn.Module, x: Tensor, settings: AISSettings, progress: bool = False,
                       desc: str = "AIS") -> AISResult:
    """Forward AIS on every image of x [N, D], in blocks of images x chains; noise fixed by settings.seed per
    block. Ctrl-C raises KeyboardInterrupt between transitions (the caller records the run as it was)."""
    model.eval()
    out, var, acc = [], [], 0.0
    blocks = _blocks(len(x), settings.chains)
    with tqdm(total=len(blocks) * settings.steps, desc=f"{desc} (T={settings.steps}, C={settings.chains})",
              unit="step", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for k, (i, j) in enumerate(blocks):
            ch = run_ais(model, x[i:j], settings, _gen(x.device, settings.seed, k), tick=bar.update)
            out.append(log_mean_exp(ch.log_w))
            var.append(mc_variance(ch.log_w))
            acc += ch.accept * (j - i)
    return AISResult(torch.cat(out).cpu(), torch.cat(var).cpu(), acc / len(x))


def simulate(model: nn.Module, n: int, gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
    """(z, x) with z ~ p(z), x ~ p(x|z): data on which the exact posterior sample z is known."""
    lik = model.likelihood
    with torch.no_grad():
        z = torch.randn((n, model.latent), generator=gen, device=device)
        params = model.decode(z)
        if hasattr(lik, "sample"):
            x = lik.sample(params, gen)
        elif getattr(lik, "name", "") == "bernoulli":
            x = torch.bernoulli(torch.sigmoid(params), generator=gen)
        elif hasattr(lik, "variance"):
            x = params + math.sqrt(lik.variance) * torch.randn(params.shape, generator=gen, device=device)
        else:
            raise ValueError(f"BDMC needs samples from the decoder's likelihood {type(lik).__name__}: give it a "
                             "sample(params, generator) method")
    return z, x


@dataclass(frozen=True)
class BDMCResult:
    lower: Tensor  # forward AIS per simulated image [N]
    upper: Tensor  # reverse AIS per simulated image [N]

    @property
    def gap(self) -> float:
        return float((self.upper - self.lower).mean())

    @property
    def gap_stderr(self) -> float:
        d = self.upper - self.lower
        return float(d.std() / math.sqrt(len(d))) if len(d) > 1 else float("nan")


@restores_grad_flags
def bdmc(model: nn.Module, images: int, settings: AISSettings, progress: bool = False,
         device: torch.device | None = None, x: Tensor | None = None, z: Tensor | None = None) -> BDMCResult:
    """Forward and reverse AIS on ``images`` simulated images (or on given (x, z), z an exact posterior sample).
    The reverse chains all start at the image's one exact sample z (Grosse et al. 2015: with C chains the upper
    bound is -log 1/C sum_c w_c)."""
    device = device or next(iter(model.parameters()), torch.empty(0)).device
    if x is None:
        z, x = simulate(model, images, _gen(device, settings.seed, 999_999), device)
    model.eval()
    lower, upper = [], []
    blocks = _blocks(len(x), settings.chains)
    with tqdm(total=2 * len(blocks) * settings.steps, desc=f"BDMC (T={settings.steps}, C={settings.chains})",
              unit="step", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for k, (i, j) in enumerate(blocks):
            fwd = run_ais(model, x[i:j], settings, _gen(device, settings.seed + 1, k), tick=bar.update)
            z0 = z[i:j, None].expand(-1, settings.chains, -1).clone()
            rev = run_ais(model, x[i:j], settings, _gen(device, settings.seed + 2, k), z0=z0, reverse=True,
                          tick=bar.update)
            lower.append(log_mean_exp(fwd.log_w))
            upper.append(-log_mean_exp(rev.log_w))
    return BDMCResult(torch.cat(lower).cpu(), torch.cat(upper).cpu())
