"""The estimators and likelihoods of variants/ against their definitions (seed, Kingma & Welling 2014).

Statistical checks draw many samples with fixed generator seeds, so they are deterministic; their
tolerances are a few standard errors computed from the same draws, never tuned to a lucky seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal, kl_divergence

from bench.core.data import MNIST
from variants.estimators import (
    ESTIMATORS,
    LossTerms,
    analytic_kl,
    iwae,
    log_normal_std,
    log_q,
    score_function,
    sgvb_a,
    sgvb_b,
)
from variants.likelihoods import DEFAULT_GAUSSIAN_VARIANCE, Bernoulli, Gaussian
from variants.model import VAE

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_model(latent: int = 4, hidden: int = 64, decoder: str = "bernoulli", seed: int = 0) -> VAE:
    """A small VAE whose posterior is far from the prior (mu ~ 1, sigma ~ 0.4): a KL of several nats, so
    a wrong KL term (in A or in B) would show."""
    torch.manual_seed(seed)
    model = VAE(latent=latent, hidden=hidden, decoder=decoder)
    with torch.no_grad():
        model.fc2.bias[:latent] += 1.0
        model.fc2.bias[latent:] -= 2.0
    return model


def z_score(a: Tensor, b: Tensor) -> Tensor:
    """(mean a - mean b) / standard error of the difference, for independent draws along dim 0."""
    se = torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    return (a.mean(0) - b.mean(0)) / se


# ---------------------------------------------------------------- KL


def test_analytic_kl_matches_torch_distributions() -> None:
    g = gen(0)
    mu, logvar = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(analytic_kl(mu, logvar), expected, rtol=1e-5, atol=1e-5)


def test_analytic_kl_is_zero_at_the_prior() -> None:
    assert analytic_kl(torch.zeros(3, 7), torch.zeros(3, 7)).abs().max() < 1e-7


def test_closed_form_kl_matches_monte_carlo() -> None:
    """KL(q || p) = E_q[log q(z) - log p(z)], estimated with 400,000 draws per datapoint."""
    g = gen(1)
    mu = torch.tensor([[0.0, 0.0, 0.0], [1.5, -0.5, 0.2], [-2.0, 0.3, 1.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.5, -2.0], [0.7, -0.3, 0.1]], dtype=torch.float64)
    n = 400_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, *mu.shape, generator=g, dtype=torch.float64)
    draws = log_q(z, mu, logvar) - log_normal_std(z)  # [n, B]
    mc, se = draws.mean(0), draws.std(0) / math.sqrt(n)
    closed = analytic_kl(mu, logvar)
    assert closed[0].abs() < 1e-12  # q = p: the estimate's draws are all 0 too
    assert torch.all((mc - closed).abs() <= 4 * se + 1e-9), (mc, closed, se)
    assert torch.all(closed[1:] > 0.5)  # non-trivial KLs, so the check could have failed


def test_log_q_and_log_prior_are_gaussian_densities() -> None:
    g = gen(2)
    mu, logvar, z = (torch.randn(4, 3, generator=g) for _ in range(3))
    expected_q = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q(z, mu, logvar), expected_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_normal_std(z), Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- likelihoods


@pytest.mark.parametrize("variance", [DEFAULT_GAUSSIAN_VARIANCE, 1.0, 0.3, 2.5])
def test_gaussian_log_density_matches_torch_normal(variance: float) -> None:
    """log N(x; mean, c I) summed over pixels, normalising constant -D/2 log(2 pi c) included."""
    g = gen(3)
    x, mean = torch.rand(5, 784, generator=g, dtype=torch.float64), torch.rand(5, 784, generator=g,
                                                                              dtype=torch.float64)
    lik = Gaussian(variance).double()
    expected = Normal(mean, math.sqrt(variance)).log_prob(x).sum(-1)
    # c is stored as a float32 log: agreement to float32 rounding of c (1e-7 relative), not to float64's
    torch.testing.assert_close(lik.log_prob(x, mean), expected, rtol=1e-6, atol=0)
    assert lik.variance == pytest.approx(variance)


def test_gaussian_normalising_constant_at_a_perfect_fit() -> None:
    """With x == mean only the constant remains: -D/2 log(2 pi c), positive for small c."""
    x = torch.rand(2, 784, dtype=torch.float64)
    got = Gaussian(0.01).double().log_prob(x, x)
    expected = torch.full((2,), -392 * math.log(2 * math.pi * 0.01), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert got[0] > 0


def test_gaussian_learned_variance_gets_a_gradient_and_broadcasts_over_samples() -> None:
    lik = Gaussian(0.5, learn=True)
    x, mean = torch.rand(3, 784), torch.rand(4, 3, 784)  # [L, B, D] against x [B, D]
    out = lik.log_prob(x, mean)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, Normal(mean, math.sqrt(0.5)).log_prob(x).sum(-1), rtol=1e-5, atol=1e-3)
    out.sum().backward()
    assert lik.log_c.grad is not None and lik.log_c.grad.abs() > 0


def test_gaussian_rejects_non_positive_variance() -> None:
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="positive"):
            Gaussian(bad)


def test_gaussian_decoder_mean_is_in_pixel_range() -> None:
    model = small_model(decoder="gaussian")
    out = model.decode(torch.randn(16, 4) * 10)
    assert out.min() >= 0 and out.max() <= 1


def test_bernoulli_log_prob_matches_torch_bernoulli_on_binary_x() -> None:
    g = gen(4)
    logits = torch.randn(6, 784, generator=g, dtype=torch.float64) * 5
    logits[0, :10] = torch.tensor([60.0, -60.0, 200.0, -200.0, 0.0, 35.0, -35.0, 1e-9, 17.0, -17.0])
    x = torch.bernoulli(torch.full((6, 784), 0.3, dtype=torch.float64), generator=g)
    expected = TorchBernoulli(logits=logits).log_prob(x).sum(-1)
    got = Bernoulli().log_prob(x, logits)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-8)


def test_bernoulli_log_prob_is_the_seeds_negative_bce_on_grey_levels() -> None:
    """On grey-level x (the seed's data) it is -F.binary_cross_entropy(sigmoid(logits), x, 'sum')."""
    g = gen(5)
    logits, x = torch.randn(4, 784, generator=g, dtype=torch.float64), torch.rand(4, 784, generator=g,
                                                                                 dtype=torch.float64)
    seed_bce = torch.stack([F.binary_cross_entropy(torch.sigmoid(lo), xi, reduction="sum")
                            for lo, xi in zip(logits, x, strict=True)])
    torch.testing.assert_close(Bernoulli().log_prob(x, logits), -seed_bce, rtol=1e-10, atol=1e-8)


def test_bernoulli_log_prob_gradients_are_those_of_bce_with_logits() -> None:
    """x - sigmoid(l) for the logits and l for x: against autograd through PyTorch's BCE-with-logits, with x
    broadcast against L samples of logits as the estimators use it."""
    g = gen(6)
    logits = (torch.randn(3, 5, 784, generator=g, dtype=torch.float64) * 8).requires_grad_()
    x = torch.rand(5, 784, generator=g, dtype=torch.float64).requires_grad_()
    weights = torch.randn(3, 5, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((Bernoulli().log_prob(x, logits) * weights).sum(), (logits, x))
    bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    ref = torch.autograd.grad((-bce * weights).sum(), (logits, x))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    small = (torch.randn(2, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradcheck(Bernoulli().log_prob, (torch.rand(2, 6, dtype=torch.float64), small))


def test_bernoulli_log_prob_broadcasts_either_way() -> None:
    """Samples of logits against one x (the estimators), or samples of x against one set of logits (a user's
    variant): each row is the log-likelihood of that pair."""
    g = gen(7)
    logits, x = torch.randn(3, 5, 784, generator=g), torch.rand(3, 5, 784, generator=g)
    lik = Bernoulli()
    torch.testing.assert_close(lik.log_prob(x[0], logits), torch.stack([lik.log_prob(x[0], lo) for lo in logits]))
    torch.testing.assert_close(lik.log_prob(x, logits[0]), torch.stack([lik.log_prob(xi, logits[0]) for xi in x]))


# ---------------------------------------------------------------- estimators


@pytest.fixture(scope="module")
def digits(mnist: MNIST) -> Tensor:
    return mnist.test_x[:32].clone()


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("samples", [1, 3])
def test_recon_plus_kld_is_loss_with_per_datapoint_shapes(name: str, samples: int, digits: Tensor) -> None:
    model = small_model()
    terms = ESTIMATORS[name](model, digits, samples, gen(6))
    assert isinstance(terms, LossTerms)
    for t in (terms.recon, terms.kld, terms.loss, terms.objective):
        assert t.shape == (len(digits),)
        assert torch.isfinite(t).all()
    torch.testing.assert_close(terms.loss, terms.recon + terms.kld)
    assert (terms.loss > 0).all()  # -ELBO of an untrained model on MNIST: hundreds of nats


def test_sgvb_b_is_the_seeds_loss_function(digits: Tensor) -> None:
    """L=1: BCE(decode(mu + sigma eps), x) summed + the seed's KLD, per datapoint, for the same eps."""
    model = small_model()
    terms = sgvb_b(model, digits, 1, gen(7))
    mu, logvar = model.encode(digits)
    eps = torch.randn((1, *mu.shape), generator=gen(7))[0]
    recon_x = torch.sigmoid(model.decode(mu + torch.exp(0.5 * logvar) * eps))
    bce = F.binary_cross_entropy(recon_x, digits, reduction="none").sum(-1)
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)
    torch.testing.assert_close(terms.recon, bce, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(terms.kld, kld)


def test_sgvb_a_kld_term_is_the_sampled_log_q_minus_log_p(digits: Tensor) -> None:
    model = small_model()
    terms = sgvb_a(model, digits, 2, gen(8))
    mu, logvar = model.encode(digits)
    z = mu + torch.exp(0.5 * logvar) * torch.randn((2, *mu.shape), generator=gen(8))
    expected = (log_q(z, mu, logvar) - log_normal_std(z)).mean(0)
    torch.testing.assert_close(terms.kld, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(terms.kld, analytic_kl(mu, logvar))  # sampled, not closed form


def replicated_losses(estimator: Callable[..., LossTerms], model: VAE, x: Tensor, rows: int, samples: int,
                      seed: int) -> Tensor:
    """``rows`` independent draws of the estimator's loss for the single datapoint x (each an L-sample mean)."""
    with torch.no_grad():
        return estimator(model, x.expand(rows, x.shape[-1]), samples, gen(seed)).loss


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_sgvb_a_and_b_agree_in_expectation(decoder: str, digits: Tensor) -> None:
    model = small_model(decoder=decoder)
    n = 20_000
    for i in (0, 1):
        x = digits[i:i + 1]
        a = replicated_losses(sgvb_a, model, x, n, 1, seed=10 + i)
        b = replicated_losses(sgvb_b, model, x, n, 1, seed=20 + i)
        assert abs(float(z_score(a, b))) < 4, (a.mean(), b.mean(), a.std(), b.std())
        assert a.std() > 0.1  # the estimates do vary: agreement is not trivial


@pytest.mark.parametrize("estimator", [sgvb_a, sgvb_b], ids=["sgvb_a", "sgvb_b"])
def test_loss_variance_falls_as_one_over_L(estimator: Callable[..., LossTerms], digits: Tensor) -> None:
    model = small_model()
    x = digits[2:3]
    rows = 4000
    var = {L: float(replicated_losses(estimator, model, x, rows, L, seed=40 + L).var()) for L in (1, 4, 16)}
    # the sample variance of 4000 near-Gaussian draws is within ~5% of the truth; allow 25% per ratio
    for L in (4, 16):
        assert 0.75 * L < var[1] / var[L] < 1.25 * L, var
    # and L=16 is still an unbiased estimate of the same bound
    one = replicated_losses(estimator, model, x, rows, 1, seed=50)
    sixteen = replicated_losses(estimator, model, x, rows, 16, seed=51)
    assert abs(float(z_score(one, sixteen))) < 4


@pytest.mark.parametrize("samples", [1, 4])
def test_iwae_with_k_1_is_sgvb_a(samples: int, digits: Tensor) -> None:
    model = small_model()
    if samples == 1:
        a, w = sgvb_a(model, digits, 1, gen(60)), iwae(model, digits, 1, gen(60))
        torch.testing.assert_close(w.loss, a.loss, rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(w.recon, a.recon, rtol=0, atol=0)
    else:  # k > 1: a tighter bound, so a smaller loss than A's average over the same k samples
        a, w = sgvb_a(model, digits, samples, gen(61)), iwae(model, digits, samples, gen(61))
        assert (w.loss <= a.loss + 1e-4).all() and (w.loss < a.loss).any()


def test_score_function_value_equals_sgvb_b_for_the_same_noise(digits: Tensor) -> None:
    model = small_model()
    for samples in (1, 3):
        b = sgvb_b(model, digits, samples, gen(70))
        for baseline in (False, True):
            s = score_function(model, digits, samples, gen(70), baseline=baseline)
            torch.testing.assert_close(s.loss, b.loss)
            torch.testing.assert_close(s.recon, b.recon)
            torch.testing.assert_close(s.kld, b.kld)
            assert s.surrogate is not None and not torch.allclose(s.objective, s.loss)


def encoder_output_grads(model: VAE, estimator: Callable[..., LossTerms], x: Tensor, rows: int, samples: int,
                         seed: int, **kwargs: object) -> Tensor:
    """Per-draw gradients of the objective w.r.t. the encoder's outputs (mu, logvar) for the datapoint x.

    Every encoder parameter's gradient is a fixed linear map of these, so unbiasedness here is unbiasedness
    of the encoder gradient; per row, they give standard errors that parameter gradients would not.
    """
    captured: list[Tensor] = []

    def keep(module: torch.nn.Module, inputs: object, out: Tensor) -> None:
        out.retain_grad()
        captured.append(out)

    handle = model.fc2.register_forward_hook(keep)
    try:
        model.zero_grad()
        terms = estimator(model, x.expand(rows, x.shape[-1]), samples, gen(seed), **kwargs)
        terms.objective.sum().backward()
    finally:
        handle.remove()
    (out,) = captured
    assert out.grad is not None
    return out.grad  # [rows, 2J]


def test_score_function_encoder_gradient_is_unbiased(digits: Tensor) -> None:
    """E[score-function gradient] = E[reparameterised gradient] (both of the same -ELBO, for phi)."""
    model = small_model()
    x = digits[:1]
    reference = encoder_output_grads(model, sgvb_b, x, 40_000, 1, seed=80)
    naive = encoder_output_grads(model, score_function, x, 20_000, 1, seed=81)
    with_baseline = encoder_output_grads(model, score_function, x, 20_000, 1, seed=82, baseline=True)
    with_baseline_l4 = encoder_output_grads(model, score_function, x, 5_000, 4, seed=83, baseline=True)
    # The naive estimator is very noisy (the seed's point): its standard error dwarfs the gradient, so this
    # check is loose; the baseline versions are sharp (a sign error would be off by ~50 standard errors).
    for grads in (naive, with_baseline, with_baseline_l4):
        z = z_score(grads, reference)
        assert z.abs().max() < 4.5, z
    assert naive.std(0).mean() > 10 * reference.std(0).mean()
    assert with_baseline.std(0).mean() < naive.std(0).mean() / 10
    assert reference.mean(0).abs().max() > 20 * (with_baseline.std(0) / math.sqrt(len(with_baseline))).max()


def test_score_function_decoder_gradient_equals_sgvb_b(digits: Tensor) -> None:
    """Only the encoder's gradient path differs: the decoder gets the ordinary gradient of the same loss."""
    model = small_model()
    grads = []
    for estimator in (sgvb_b, score_function):
        model.zero_grad()
        estimator(model, digits, 2, gen(90)).objective.sum().backward()
        grads.append([p.grad.clone() for p in model.decoder_parameters()])
    for gb, gs in zip(*grads, strict=True):
        torch.testing.assert_close(gs, gb, rtol=1e-4, atol=1e-4)
