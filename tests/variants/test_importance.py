"""STL, DReG, MIWAE, PIWAE and CIWAE against their definitions: the gradient-only estimators keep the plain value
and are unbiased for the same bound (IWAE-STL is not, as Tucker et al. 2018 show, and the test sees it), and the
Rainforth et al. bounds are what their equations say.

Unbiasedness: G group means of n draws each, the estimator and the plain one on the same noise (paired), projected
on fixed random directions of the encoder's parameter space; each projection's paired mean difference must lie
within TOL standard errors of 0 (its standard error from the G group means). TOL = 4: a false alarm at about
6e-5 per projection under a normal law, 5e-4 over the 8 projections.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from bench.core.data import MNIST
from variants.estimators import LossTerms, sgvb_a, sgvb_a_stl
from variants.importance import _iwae_dreg_two_pass, ciwae, iwae, iwae_dreg, iwae_stl, miwae, piwae
from variants.model import VAE
from variants.terms import draw, log_weights, weights

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 4.0
GROUPS, PER_GROUP, PROJECTIONS = 40, 100, 8


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def setting(mnist: MNIST) -> tuple[VAE, Tensor]:
    """A small model whose posterior is away from the prior, and 4 binarised digits."""
    torch.manual_seed(0)
    model = VAE(latent=2, hidden=16)
    with torch.no_grad():
        model.fc2.bias[:2] += 1.0
        model.fc2.bias[2:] -= 2.0
    return model, torch.bernoulli(mnist.test_x[:4], generator=gen(0))


def flat(params: list[torch.nn.Parameter]) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]).double()


def gradient(model: VAE, estimator: Callable[..., LossTerms], x: Tensor, k: int, seed: int,
             **options: object) -> tuple[Tensor, Tensor]:
    model.zero_grad(set_to_none=True)
    estimator(model, x, k, gen(seed), **options).objective.mean().backward()
    out = flat(model.encoder_parameters()), flat(model.decoder_parameters())
    model.zero_grad(set_to_none=True)
    return out


def group_means(model: VAE, estimator: Callable[..., LossTerms], x: Tensor, k: int) -> Tensor:
    """[GROUPS, P] encoder gradients, each the mean of PER_GROUP draws (x repeated: the objective is a mean over
    datapoints), group g drawn from seed 100 + g for every estimator (the same noise: paired)."""
    xr = x.repeat(PER_GROUP, 1)
    return torch.stack([gradient(model, estimator, xr, k, 100 + g)[0] for g in range(GROUPS)])


def projected_t(a: Tensor, b: Tensor) -> Tensor:
    """t statistics of the paired mean difference a - b, projected on PROJECTIONS fixed random directions."""
    u = torch.randn(PROJECTIONS, a.shape[1], generator=gen(5), dtype=torch.float64)
    d = (a - b) @ u.T
    return d.mean(0) / (d.std(0) / math.sqrt(len(d)))


@pytest.mark.parametrize("estimator, plain, k", [(sgvb_a_stl, sgvb_a, 1), (sgvb_a_stl, sgvb_a, 3),
                                                 (iwae_stl, iwae, 4), (iwae_dreg, iwae, 4)])
def test_gradient_only_estimators_keep_the_plain_value_and_decoder_gradient(setting, estimator, plain, k) -> None:
    model, x = setting
    new, old = estimator(model, x, k, gen(1)), plain(model, x, k, gen(1))
    torch.testing.assert_close(new.loss, old.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(new.objective, old.loss, rtol=1e-5, atol=1e-4)  # the surrogate's value too
    (_, dec_new), (enc_old, dec_old) = gradient(model, estimator, x, k, 2), gradient(model, plain, x, k, 2)
    torch.testing.assert_close(dec_new, dec_old, rtol=1e-4, atol=2e-5)  # logsumexp's float32 backward (above)
    assert not torch.allclose(gradient(model, estimator, x, k, 2)[0], enc_old)  # the encoder's does change


@pytest.mark.parametrize("estimator, plain, k", [(sgvb_a_stl, sgvb_a, 1), (iwae_dreg, iwae, 5)],
                         ids=["sgvb_a_stl", "iwae_dreg_k5"])
def test_stl_and_dreg_gradients_are_unbiased_for_the_same_bound(setting, estimator, plain, k) -> None:
    model, x = setting
    new, old = group_means(model, estimator, x, k), group_means(model, plain, x, k)
    t = projected_t(new, old)
    assert t.abs().max() < TOL, t
    # Power: the plain gradient itself stands far out of the same noise on every projection.
    u = torch.randn(PROJECTIONS, old.shape[1], generator=gen(5), dtype=torch.float64)
    signal = (old @ u.T).mean(0) / ((old @ u.T).std(0) / math.sqrt(GROUPS))
    assert signal.abs().min() > TOL, signal


def test_one_pass_dreg_has_the_two_pass_gradients_and_values(setting) -> None:
    """The hook form (one decoder pass) against the explicit formulas on the same noise, K = 5, log q at sg(mu),
    sg(sigma) (phi through z alone):

        encoder  -1/B sum_b sum_k sg(w~_k^2) grad_phi log w_k,   decoder  -1/B sum_b sum_k sg(w~_k) grad_theta log w_k,

    and against the two-pass form it replaced. That one's decoder gradient goes through logsumexp's backward,
    exp(log w_k - LSE) with |LSE| ~ 500 nats in float32: ~500 * 6e-8 = 3e-5 relative error of its own, hence
    its looser tolerance (the softmax of the explicit form subtracts the max first)."""
    model, x = setting
    k = 5
    one = gradient(model, iwae_dreg, x, k, 7)
    assert one[0].abs().max() > 0 and one[1].abs().max() > 0
    log_w = weights(model, draw(model, x, k, gen(7)), path=True).log_w  # [K, B]
    wt = torch.softmax(log_w.detach(), 0)
    model.zero_grad(set_to_none=True)
    (-(wt ** 2 * log_w).sum(0).mean()).backward(retain_graph=True)
    enc = flat(model.encoder_parameters())
    model.zero_grad(set_to_none=True)
    (-(wt * log_w).sum(0).mean()).backward()
    dec = flat(model.decoder_parameters())
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(one[0], enc, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one[1], dec, rtol=1e-5, atol=1e-7)
    ref = gradient(model, lambda m, xb, s, g: _iwae_dreg_two_pass(m, draw(m, xb, s, g)), x, k, 7)
    torch.testing.assert_close(one[0], ref[0], rtol=1e-5, atol=1e-7)
    assert float((one[1] - ref[1]).norm() / ref[1].norm()) < 1e-4
    new, old = iwae_dreg(model, x, k, gen(3)), _iwae_dreg_two_pass(model, draw(model, x, k, gen(3)))
    torch.testing.assert_close(new.objective, old.objective)
    torch.testing.assert_close(new.loss, old.loss)


def test_iwae_stl_is_biased_for_k_above_1_and_the_test_sees_it(setting) -> None:
    """Tucker et al. 2018: sum_k w~_k grad_phi log q does not vanish in expectation. The paired test above, with
    the same draws and tolerance, rejects IWAE-STL at K = 5: the unbiasedness checks have the power to fail."""
    model, x = setting
    t = projected_t(group_means(model, iwae_stl, x, 5), group_means(model, iwae, x, 5))
    assert t.abs().max() > 10 * TOL, t


def test_miwae_is_the_mean_of_m_iwae_bounds(setting) -> None:
    model, x = setting
    terms = miwae(model, x, 3, gen(4), groups=4)
    log_w = log_weights(model, x, 12, gen(4)).log_w.reshape(4, 3, -1)
    expected = torch.stack([torch.logsumexp(log_w[m], 0) - math.log(3) for m in range(4)]).mean(0)
    torch.testing.assert_close(-terms.loss, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(miwae(model, x, 5, gen(4), groups=1).loss, iwae(model, x, 5, gen(4)).loss)
    with pytest.raises(ValueError, match="groups"):
        miwae(model, x, 3, gen(4), groups=0)


def test_piwae_follows_iwae_for_the_decoder_and_miwae_for_the_encoder(setting) -> None:
    model, x = setting
    enc_p, dec_p = gradient(model, piwae, x, 3, 7, groups=4)
    enc_m, _ = gradient(model, miwae, x, 3, 7, groups=4)
    _, dec_i = gradient(model, iwae, x, 12, 7)
    torch.testing.assert_close(enc_p, enc_m, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dec_p, dec_i, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(piwae(model, x, 3, gen(7), groups=4).loss, iwae(model, x, 12, gen(7)).loss)


def test_ciwae_interpolates_between_the_elbo_and_iwae(setting) -> None:
    model, x = setting
    elbo, bound = sgvb_a(model, x, 6, gen(8)).loss, iwae(model, x, 6, gen(8)).loss
    torch.testing.assert_close(ciwae(model, x, 6, gen(8), beta=1.0).loss, elbo)
    torch.testing.assert_close(ciwae(model, x, 6, gen(8), beta=0.0).loss, bound)
    torch.testing.assert_close(ciwae(model, x, 6, gen(8), beta=0.25).loss, 0.25 * elbo + 0.75 * bound)
    with pytest.raises(ValueError, match="beta"):
        ciwae(model, x, 6, gen(8), beta=1.5)
