"""bench.nll against models whose log p(x) is known: a linear-Gaussian model (closed form) and a small
Bernoulli model with a 2-D latent (quadrature). The real VAE is checked against variants.estimators."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.evaluation.nll import estimate_nll, iwae_log_likelihood, log_weights
from variants.estimators import analytic_kl, iwae, log_normal_std, sgvb_a, sgvb_b
from variants.likelihoods import Bernoulli, Gaussian
from variants.model import VAE


class LinearGaussian(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, cI), so p(x) = N(b, W W^T + cI) in closed form.

    The encoder is the exact posterior mean plus ``shift``, with a diagonal variance ``inflate`` times the
    posterior's largest eigenvalue: q covers p(z|x) (bounded weights) without equalling it, so the bound
    is strict at K = 1. With orthogonal columns of W, shift 0 and inflate None, q is the exact posterior.
    """

    def __init__(self, d: int = 10, j: int = 4, c: float = 0.3, shift: float = 0.3, inflate: float | None = 1.5,
                 orthogonal: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(d, j, generator=g, dtype=torch.float64)
        if orthogonal:
            w = torch.linalg.qr(w)[0] * torch.linspace(0.5, 2.0, j, dtype=torch.float64)
        self.w, self.b, self.c, self.latent = w, torch.randn(d, generator=g, dtype=torch.float64), c, j
        self.likelihood = Gaussian(variance=c)
        cov = torch.linalg.inv(torch.eye(j, dtype=torch.float64) + w.T @ w / c)  # Cov(z|x)
        self.a = cov @ w.T / c  # E[z|x] = a (x - b)
        var = cov.diagonal() if inflate is None else torch.full((j,), inflate * float(torch.linalg.eigvalsh(cov).max()))
        self.q_logvar = var.log().float()
        self.shift = (shift * torch.randn(j, generator=g, dtype=torch.float64)).float()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = (x.double() - self.b) @ self.a.T
        mu = mu.float() + self.shift
        return mu, self.q_logvar.expand_as(mu)

    def decode(self, z: Tensor) -> Tensor:
        return (z.double() @ self.w.T + self.b).float()

    def log_px(self, x: Tensor) -> Tensor:
        cov = self.w @ self.w.T + self.c * torch.eye(len(self.b), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x.double())

    def elbo(self, x: Tensor) -> Tensor:
        """E_q[log p(x|z)] - KL(q || p) in closed form: E||x - Wz - b||^2 = ||x - W mu - b||^2 + sum_j s_j^2 |W_j|^2"""
        mu, logvar = (t.double() for t in self.encode(x))
        err = (x.double() - mu @ self.w.T - self.b).pow(2).sum(-1) + (logvar.exp() * self.w.pow(2).sum(0)).sum(-1)
        d = len(self.b)
        return -0.5 * err / self.c - 0.5 * d * math.log(2 * math.pi * self.c) - analytic_kl(mu, logvar)

    def sample(self, n: int, seed: int = 1) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent, generator=g, dtype=torch.float64)
        return (z @ self.w.T + self.b + math.sqrt(self.c) * torch.randn(n, len(self.b), generator=g,
                                                                         dtype=torch.float64)).float()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_exact_posterior_gives_log_px_exactly_for_any_k_and_chunking() -> None:
    # With q = p(z|x) every importance weight equals p(x): this pins down every constant.
    model = LinearGaussian(orthogonal=True, shift=0.0, inflate=None)
    x = model.sample(50)
    truth = model.log_px(x)
    for k, rows in ((1, 2000), (7, 3), (64, 1000)):
        est = iwae_log_likelihood(model, x, k, k, rows=rows)
        assert torch.allclose(est, truth, atol=2e-3), (k, rows, (est - truth).abs().max())


def test_estimate_approaches_closed_form_as_k_grows_and_never_beats_it() -> None:
    model = LinearGaussian()
    x = model.sample(300)
    truth = model.log_px(x)
    gaps = []
    for k in (1, 10, 100, 1000):
        d = iwae_log_likelihood(model, x, k, k) - truth
        gap, se = float(d.mean()), float(d.std() / math.sqrt(len(d)))
        assert gap < 3 * se + 1e-3, f"K={k}: estimate beats log p(x) by {gap:.4f} (se {se:.4f})"
        gaps.append(gap)
    assert gaps[0] < -1.0  # a strict bound at K = 1 (the encoder is off), so the test has power
    assert all(abs(b) < abs(a) for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert abs(gaps[-1]) < 0.05, gaps


def test_stable_far_from_the_data() -> None:
    # log p(x) of several thousand nats below zero: exp() of the weights underflows, log-mean-exp must not.
    model = LinearGaussian()
    x = model.sample(20) * 30
    truth = model.log_px(x)
    assert float(truth.max()) < -1000
    d = iwae_log_likelihood(model, x, 500, 3) - truth
    assert torch.isfinite(d).all()
    assert float(d.mean()) < 0.05 and float(d.mean()) > -1.0


def test_k1_equals_the_elbo_in_expectation() -> None:
    model = LinearGaussian()
    x = model.sample(4000, seed=5)
    d = iwae_log_likelihood(model, x, 1, 7) - model.elbo(x)
    assert abs(float(d.mean())) < 4 * float(d.std() / math.sqrt(len(d)))


class SmallBernoulli(nn.Module):
    """z (2-D) -> 16 Bernoulli pixels through a tanh MLP: small enough for log p(x) by quadrature."""

    latent = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dec = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16))
        self.enc = nn.Linear(16, 4)
        self.likelihood = Bernoulli()
        with torch.no_grad():
            self.dec[2].weight.mul_(3)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.enc(x).chunk(2, -1)
        return 0.3 * mu, 0.3 * logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(z)

    @torch.no_grad()
    def log_px_quadrature(self, x: Tensor, n: int = 201, lim: float = 7.0) -> Tensor:
        t = torch.linspace(-lim, lim, n)
        z = torch.cartesian_prod(t, t)
        log_joint = (self.likelihood.log_prob(x[:, None].double(), self.decode(z).double()[None].expand(len(x), -1, -1))
                     + log_normal_std(z.double()))
        return torch.logsumexp(log_joint, dim=1) + 2 * math.log(float(t[1] - t[0]))


def test_bernoulli_model_matches_quadrature() -> None:
    model = SmallBernoulli()
    x = torch.bernoulli(torch.rand(40, 16, generator=_gen(0)), generator=_gen(1))
    truth = model.log_px_quadrature(x)
    assert torch.allclose(truth, model.log_px_quadrature(x, n=151), atol=1e-6)  # the grid has converged
    d1 = iwae_log_likelihood(model, x, 1, 2) - truth
    d = iwae_log_likelihood(model, x, 3000, 3) - truth
    assert float(d1.mean()) < -0.2  # the encoder is poor: a real gap to close
    assert abs(float(d.mean())) < max(4 * float(d.std() / math.sqrt(len(d))), 0.01), float(d.mean())


@pytest.mark.parametrize("binary", [True, False])
def test_float32_bernoulli_log_prob_matches_bce_in_float64(binary: bool) -> None:
    g = _gen(0)
    logits = torch.randn(3, 64, 784, generator=g) * 12  # far into both tails
    x = torch.rand(64, 784, generator=g)
    if binary:
        x = torch.bernoulli(x, generator=g)
    ref = -F.binary_cross_entropy_with_logits(logits.double(), x.double().expand_as(logits), reduction="none").sum(-1)
    assert (Bernoulli().log_prob(x, logits).double() - ref).abs().max() < 2e-3


@pytest.fixture(scope="module")
def vae_and_x(mnist) -> tuple[VAE, Tensor]:
    torch.manual_seed(0)
    return VAE(latent=5, hidden=64).eval(), torch.bernoulli(mnist.test_x[:64], generator=_gen(0))


def test_log_weights_match_sgvb_a_on_the_vae(vae_and_x) -> None:
    # Same eps, two independent code paths: bench.nll's log w (fast Bernoulli) and SGVB A's loss.
    model, x = vae_and_x
    with torch.no_grad():
        mu, logvar = model.encode(x)
        eps = torch.randn((1, len(x), model.latent), generator=_gen(4))
        log_w = log_weights(model, x, mu, logvar, eps)[0]
        loss_a = sgvb_a(model, x, 1, _gen(4)).loss
    assert torch.allclose(log_w, -loss_a, atol=1e-3)


def test_iwae_estimator_with_k1_is_sgvb_a_and_the_elbo_in_expectation(vae_and_x) -> None:
    model, x = vae_and_x
    with torch.no_grad():
        assert torch.allclose(iwae(model, x, 1, _gen(5)).loss, sgvb_a(model, x, 1, _gen(5)).loss, atol=1e-4)
        # E[-L_1] (sampled KL) = E[-L^B] (closed-form KL): 400 independent draws for each of the 64 images.
        xr = x.repeat(400, 1)
        k1 = iwae(model, xr, 1, _gen(6)).loss.view(400, len(x))
        b = sgvb_b(model, xr, 1, _gen(7)).loss.view(400, len(x))
    diff = k1.mean(0) - b.mean(0)  # per image
    se = ((k1.var(0) + b.var(0)) / 400).sqrt()
    assert (diff.abs() < 4.5 * se + 1e-3).float().mean() > 0.95
    assert abs(float(diff.mean())) < 4 * float(se.pow(2).mean().sqrt() / math.sqrt(len(x)))


def test_estimate_nll_reports_mean_stderr_and_is_reproducible() -> None:
    model = LinearGaussian()
    x = model.sample(100)
    r1, r2 = estimate_nll(model, x, 20), estimate_nll(model, x, 20)
    assert r1.nll == r2.nll
    assert r1.nll == pytest.approx(-float(r1.log_px.mean()))
    assert r1.stderr == pytest.approx(float(r1.log_px.std()) / 10)
    assert r1.metrics() == {"test_nll": r1.nll, "test_nll_stderr": r1.stderr}  # K is a setting, not a chart


def test_the_estimate_does_not_depend_on_the_number_of_workers() -> None:
    threads = torch.get_num_threads()
    model = LinearGaussian()
    x = model.sample(37)
    one = iwae_log_likelihood(model, x, 50, 9, rows=120, workers=1)
    assert torch.equal(one, iwae_log_likelihood(model, x, 50, 9, rows=120, workers=3))
    assert not torch.equal(one, iwae_log_likelihood(model, x, 50, 10, rows=120))  # the seed fixes the noise
    assert torch.get_num_threads() == threads  # restored after the workers
