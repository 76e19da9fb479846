"""AIS, BDMC and the gap decomposition against closed forms: the linear-Gaussian model of test_nll (log p(x) and
the posterior N(m, S) known exactly) and a 2-D correlated Gaussian target for HMC."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from bench.evaluation.ais import (
    AISSettings,
    State,
    Target,
    ais_log_likelihood,
    bdmc,
    evaluate,
    hmc_step,
    linear_schedule,
    mc_variance,
    sigmoid_schedule,
    simulate,
)
from bench.evaluation.gaps import elbo, gaps, optimise_q
from bench.evaluation.quadrature import log_px_grid
from tests.evaluation.test_nll import LinearGaussian, SmallBernoulli
from variants.estimators import sgvb_b
from variants.model import VAE

STEPS_2D = 500


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_schedules_run_from_0_to_1_increasing_and_sigmoid_is_finer_at_the_ends() -> None:
    for steps in (1, 7, 1000):
        for f in (sigmoid_schedule, linear_schedule):
            b = f(steps)
            assert len(b) == steps + 1 and b[0] == 0 and b[-1] == 1
            assert (b.diff() > 0).all()
    d = sigmoid_schedule(1000).diff()
    assert d[0] < d[500] / 5 and d[-1] < d[500] / 5  # small steps near both ends
    assert torch.allclose(d, d.flip(0))  # symmetric
    with pytest.raises(ValueError):
        sigmoid_schedule(0)


class Correlated2D:
    """A stand-in Target whose log f_beta is N(0, Sigma) at every beta (p_0 = p_T): HMC must sample it exactly."""

    sigma = torch.tensor([[1.0, 0.8], [0.8, 1.0]])

    def __init__(self) -> None:
        self.prec = torch.linalg.inv(self.sigma)

    def log_joint(self, z: Tensor) -> Tensor:
        return -0.5 * ((z @ self.prec) * z).sum(-1)

    def log_start(self, z: Tensor) -> Tensor:
        return self.log_joint(z)

    def grad_log_start(self, z: Tensor) -> Tensor:
        return -(z @ self.prec)


def test_hmc_leaves_a_correlated_gaussian_invariant() -> None:
    # Start exactly at the target; after many transitions from there the moments must still match (detailed balance
    # makes the target stationary). 4000 chains x 30 transitions: the moments' standard errors are ~0.02.
    target = Correlated2D()
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(1, 4000, 2, generator=g) @ torch.linalg.cholesky(target.sigma).T)
    state = evaluate(target, z)  # type: ignore[arg-type]
    rates = []
    for _ in range(30):
        state, acc = hmc_step(target, state, 1.0, 0.6, 5, g)  # type: ignore[arg-type]
        rates.append(float(acc.float().mean()))
    zs = state.z[0]
    assert 0.3 < sum(rates) / len(rates) < 0.99  # a real MH test: some proposals are rejected
    assert zs.mean(0).abs().max() < 0.08
    assert (torch.cov(zs.T) - target.sigma).abs().max() < 0.08
    assert (state.z[0] - z[0]).abs().mean() > 0.3  # and the chains moved


def test_hmc_from_far_away_reaches_the_target_moments() -> None:
    target = Correlated2D()
    g = torch.Generator().manual_seed(1)
    state = evaluate(target, torch.full((1, 4000, 2), 3.0))  # type: ignore[arg-type]
    for _ in range(60):
        state, _ = hmc_step(target, state, 1.0, 0.6, 5, g)  # type: ignore[arg-type]
    zs = state.z[0]
    assert zs.mean(0).abs().max() < 0.1
    assert (torch.cov(zs.T) - target.sigma).abs().max() < 0.1


def test_state_gradient_is_the_gradient_of_log_f_at_every_beta() -> None:
    model = LinearGaussian()
    x = model.sample(3)
    for start in ("prior", "encoder"):
        t = Target(model, x, start)
        z = torch.randn(3, 2, model.latent, generator=torch.Generator().manual_seed(2))
        s: State = evaluate(t, z)
        for beta in (0.0, 0.3, 1.0):
            zg = z.clone().requires_grad_(True)
            lf = t.log_start(zg) + beta * (t.log_joint(zg) - t.log_start(zg))
            (g,) = torch.autograd.grad(lf.sum(), zg)
            assert torch.allclose(s.grad(beta), g, atol=1e-4)
            assert torch.allclose(s.log_f(beta), lf.detach(), atol=1e-4)


@pytest.fixture(scope="module")
def lg() -> tuple[LinearGaussian, Tensor, Tensor]:
    model = LinearGaussian()
    x = model.sample(40)
    return model, x, model.log_px(x)


@pytest.mark.parametrize("start, steps", [("prior", 500), ("encoder", 200)])
def test_ais_matches_the_closed_form_log_px(lg, start: str, steps: int) -> None:
    model, x, truth = lg
    r = ais_log_likelihood(model, x, AISSettings(steps=steps, chains=8, start=start))
    d = r.log_px - truth
    err = 3 * max(r.mc_stderr, float(d.std() / math.sqrt(len(d))))
    assert abs(float(d.mean())) < err, (float(d.mean()), err)
    assert err < 0.3  # and the stated error is small enough to mean something
    assert 0.4 < r.accept < 0.95  # the step size adapted towards 0.65
    # reproducible: the noise is fixed by the seed
    again = ais_log_likelihood(model, x[:8], AISSettings(steps=20, chains=2, start=start))
    assert torch.equal(again.log_px, ais_log_likelihood(model, x[:8], AISSettings(steps=20, chains=2,
                                                                                     start=start)).log_px)


def test_few_steps_give_a_lower_bound_that_tightens(lg) -> None:
    model, x, truth = lg
    short = float((ais_log_likelihood(model, x, AISSettings(steps=10, chains=4)).log_px - truth).mean())
    long = float((ais_log_likelihood(model, x, AISSettings(steps=300, chains=4)).log_px - truth).mean())
    assert short < -1.0  # a real gap at T = 10 (stochastic lower bound), so the test has power
    assert short < long


def test_bdmc_sandwiches_the_exact_log_px() -> None:
    model = LinearGaussian()
    z, x = simulate(model, 40, torch.Generator().manual_seed(3), torch.device("cpu"))
    truth = model.log_px(x)
    for steps in (30, 300):
        r = bdmc(model, 40, AISSettings(steps=steps, chains=4), x=x, z=z)
        lower, upper = float((r.lower - truth).mean()), float((r.upper - truth).mean())
        se = max(float((r.lower - truth).std()), float((r.upper - truth).std())) / math.sqrt(40)
        assert lower < 3 * se and upper > -3 * se, (steps, lower, upper, se)
        assert r.gap > 0
        if steps == 30:
            short_gap = r.gap
    assert r.gap < short_gap / 3 and r.gap < 1.0  # the sandwich closes as T grows (0.54 at T = 300, C = 4)


def test_bdmc_simulates_bernoulli_data() -> None:
    model = SmallBernoulli()
    z, x = simulate(model, 10, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert z.shape == (10, 2) and set(x.unique().tolist()) <= {0.0, 1.0}
    r = bdmc(model, 10, AISSettings(steps=100, chains=2), x=x, z=z)
    truth = model.log_px_quadrature(x)
    assert float((r.lower - truth).mean()) < 0.05 and float((r.upper - truth).mean()) > -0.05


def test_mc_variance_is_zero_for_equal_weights_and_the_delta_method_otherwise() -> None:
    assert mc_variance(torch.zeros(3, 5, dtype=torch.float64)).abs().max() == 0
    log_w = torch.log(torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    assert torch.allclose(mc_variance(log_w), torch.tensor([2.0 / 4 / 2], dtype=torch.float64))  # var 2, mean 2


def _posterior(model: LinearGaussian, x: Tensor) -> tuple[Tensor, Tensor]:
    """The exact posterior's mean (per image) and precision Lambda = S^-1 = I + W^T W / c."""
    lam = torch.eye(model.latent, dtype=torch.float64) + model.w.T @ model.w / model.c
    return (x.double() - model.b) @ model.a.T, lam


def test_optimised_q_is_the_best_diagonal_gaussian(lg) -> None:
    # The KL(q || p(z|x))-optimal diagonal Gaussian has the posterior's mean and variances 1 / Lambda_ii.
    model, x, _ = lg
    m, lam = _posterior(model, x)
    mu, logvar = model.encode(x)
    assert (logvar.exp() - 1 / lam.diagonal()).abs().max() > 0.05  # the encoder starts elsewhere
    mu_s, lv_s = optimise_q(model, x, mu, logvar, gen=torch.Generator().manual_seed(0))
    assert (mu_s.double() - m).abs().max() < 0.03
    assert ((lv_s.exp().double() * lam.diagonal()) - 1).abs().max() < 0.2


def test_gaps_match_their_closed_forms(lg) -> None:
    model, x, truth = lg
    _, lam = _posterior(model, x)
    kl_star = float(0.5 * (lam.diagonal().log().sum() - torch.logdet(lam)))  # KL(q* || p(z|x))
    g = gaps(model, x, truth)
    m = g.metrics()
    se_enc = float(g.elbo_encoder_var.sum().sqrt()) / len(x)  # the estimates' own Monte Carlo error
    se_opt = float(g.elbo_optimised_var.sum().sqrt()) / len(x)
    # ELBO[q_enc] has a closed form too (test_nll's LinearGaussian.elbo)
    assert abs(float((g.elbo_encoder - model.elbo(x)).mean())) < 4 * se_enc
    # log p(x) is exact here: the approximation gap is ELBO[q*]'s error plus q*'s distance from the optimum
    assert se_opt < 0.02
    assert abs(m["gap/approximation"] - kl_star) < 0.05 + 4 * se_opt, (m["gap/approximation"], kl_star, se_opt)
    assert m["gap/approximation"] > 0.5 * kl_star  # the diagonal q* cannot reach the correlated posterior
    encoder_gap = float((truth - model.elbo(x)).mean())
    assert abs(m["gap/amortization"] + m["gap/approximation"] - encoder_gap) < 4 * se_enc
    assert m["gap/amortization"] > 1.0  # the encoder is off: a real amortization gap


def test_elbo_variance_shrinks_with_samples(lg) -> None:
    model, x, _ = lg
    mu, logvar = model.encode(x)
    _, v10 = elbo(model, x, mu, logvar, 10, torch.Generator().manual_seed(0))
    _, v1000 = elbo(model, x, mu, logvar, 1000, torch.Generator().manual_seed(0))
    assert float(v1000.mean()) < float(v10.mean()) / 30


def test_bad_settings_are_refused() -> None:
    for kw in ({"steps": 0}, {"chains": 0}, {"leapfrog": 0}, {"schedule": "cubic"}, {"start": "posterior"}):
        with pytest.raises(ValueError):
            AISSettings(**kw)


@pytest.fixture(scope="module")
def mnist_2d(mnist) -> tuple[VAE, Tensor]:
    """A real 784-64-2 Bernoulli VAE, 300 Adam steps of SGVB B on 1,000 binarised MNIST images (seconds)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = VAE(latent=2, hidden=64)
    x = torch.bernoulli(mnist.train_x[:1000], generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(300):
        batch = x[(i * 100) % 1000:(i * 100) % 1000 + 100]
        loss = sgvb_b(model, batch, 1, g).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), torch.bernoulli(mnist.test_x[:6], generator=g)


def test_ais_matches_quadrature_on_a_2d_mnist_model(mnist_2d) -> None:
    # The fast version of scripts/check_ais_2d.py: the grid has converged, and AIS is within 0.1 nats per image.
    model, x = mnist_2d
    exact = log_px_grid(model, x, n=300)
    assert (exact - log_px_grid(model, x, n=200)).abs().max() < 1e-3
    r = ais_log_likelihood(model, x, AISSettings(steps=STEPS_2D, chains=8))
    d = r.log_px - exact
    assert abs(float(d.mean())) < 0.1, d
    assert float(d.mean()) < 3 * r.mc_stderr  # a lower bound, up to its noise


def test_quadrature_is_exact_on_a_2d_linear_gaussian_model() -> None:
    # The Gaussian-decoder path of the grid (the GEMM form of -|x - m|^2 / 2c) against the closed form.
    model = LinearGaussian(j=2)
    x = model.sample(5)
    assert torch.allclose(log_px_grid(model, x, n=300), model.log_px(x), atol=1e-4)


def test_ais_on_a_gaussian_decoder_vae_runs_and_bdmc_brackets_it() -> None:
    # The real VAE class with a Gaussian decoder, on data simulated from it: both bounds against quadrature.
    torch.manual_seed(0)
    model = VAE(latent=2, hidden=32, decoder="gaussian", gaussian_variance=0.1).eval()
    z, x = simulate(model, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    truth = log_px_grid(model, x, n=300)
    assert (truth - log_px_grid(model, x, n=200)).abs().max() < 1e-3
    r = bdmc(model, 8, AISSettings(steps=200, chains=4), x=x, z=z)
    lower, upper = float((r.lower - truth).mean()), float((r.upper - truth).mean())
    assert -0.3 < lower < 0.05 and -0.05 < upper < 0.3, (lower, upper)


def test_ais_and_q_star_give_the_models_parameters_their_requires_grad_back() -> None:
    from bench.evaluation.ais import restores_grad_flags

    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)

    @restores_grad_flags
    def inside(m: nn.Module) -> list[bool]:
        return [p.requires_grad for p in m.parameters()]

    assert inside(model) == [False, False]
    assert [p.requires_grad for p in model.parameters()] == [True, False]

    @restores_grad_flags
    def fails(m: nn.Module) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fails(model)
    assert [p.requires_grad for p in model.parameters()] == [True, False]
