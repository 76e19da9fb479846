"""bench.gradvar: the variance it reports is the variance of the gradients, and the estimators it compares
are unbiased for the same ELBO gradient (so their variances are comparable)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from bench.evaluation.gradvar import (
    COMPARED,
    SWEEP,
    _flat_grad,
    gradient_stats,
    gradvar_metrics,
    gradvar_table,
    measure_all,
)
from variants.model import VAE
from variants.registry import Variant

B = Variant("b", "", "sgvb_b")
A = Variant("a", "", "sgvb_a")
SF = Variant("sf", "", "score_function")
SFB = Variant("sfb", "", "score_function", baseline=True)


@pytest.fixture(scope="module")
def small(mnist) -> tuple[VAE, Tensor]:
    torch.manual_seed(0)
    x = torch.bernoulli(mnist.test_x[:16], generator=torch.Generator().manual_seed(0))
    return VAE(latent=2, hidden=8).eval(), x


def _grads(model: VAE, x: Tensor, variant: Variant, repeats: int, seed: int) -> tuple[Tensor, Tensor]:
    """Every draw's encoder and decoder gradient, kept (the brute-force reference): [R, P] each."""
    gen = torch.Generator().manual_seed(seed)
    enc, dec = [], []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        variant.estimate(model, x, gen).objective.mean().backward()
        enc.append(_flat_grad(model.encoder_parameters()))
        dec.append(_flat_grad(model.decoder_parameters()))
    model.zero_grad(set_to_none=True)
    return torch.stack(enc).double(), torch.stack(dec).double()


def test_total_variance_and_snr_match_brute_force(small) -> None:
    model, x = small
    stats = gradient_stats(model, x, B, repeats=50, seed=3)
    enc, dec = _grads(model, x, B, 50, 3)
    for s_var, s_snr, g in ((stats.encoder_var, stats.encoder_snr, enc), (stats.decoder_var, stats.decoder_snr, dec)):
        var = float(g.var(0).sum())
        assert s_var == pytest.approx(var, rel=1e-6)
        assert s_snr == pytest.approx((float(g.mean(0).pow(2).sum()) - var / 50) / var, rel=1e-6)


def test_same_noise_gives_a_and_b_the_same_decoder_gradient(small) -> None:
    model, x = small
    a, b = gradient_stats(model, x, A, 20, seed=1), gradient_stats(model, x, B, 20, seed=1)
    assert a.decoder_var == pytest.approx(b.decoder_var, rel=1e-5)
    sf = gradient_stats(model, x, SF, 20, seed=1)  # z drawn the same way, the decoder's usual gradient
    assert sf.decoder_var == pytest.approx(b.decoder_var, rel=1e-5)


def _group_means(model: VAE, x: Tensor, variant: Variant, reps: int, groups: int, seed: int) -> Tensor:
    """``groups`` independent means of ``reps`` draws of the encoder gradient, each in one backward pass over
    x repeated ``reps`` times (the objective is a mean over datapoints): [groups, P]."""
    gen = torch.Generator().manual_seed(seed)
    xr = x.repeat(reps, 1)
    out = []
    for _ in range(groups):
        model.zero_grad(set_to_none=True)
        variant.estimate(model, xr, gen).objective.mean().backward()
        out.append(_flat_grad(model.encoder_parameters()).double())
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


@pytest.mark.parametrize("variant", [A, SFB], ids=["sgvb_a", "score_function_baseline"])
def test_estimators_are_unbiased_for_the_same_encoder_gradient(small, variant: Variant) -> None:
    # 1000 draws of each estimator vs 1000 of B: the means agree up to their standard errors. (The plain
    # score function is the same code with baseline 0; its variance would need ~10^6 draws here.)
    model, x = small
    g, gb = _group_means(model, x, variant, 100, 10, seed=11), _group_means(model, x, B, 100, 10, seed=12)
    diff2 = float((g.mean(0) - gb.mean(0)).pow(2).sum())
    noise = float(g.var(0).sum() + gb.var(0).sum()) / len(g)  # E||difference of the means||^2 if both unbiased
    assert diff2 < 3.0 * noise, (diff2, noise)
    # Power: the sampled part of the gradient (all but the closed-form KL's) is far above that noise.
    model.zero_grad(set_to_none=True)
    mu, logvar = model.encode(x)
    (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum(-1).mean().backward()
    g_kl = _flat_grad(model.encoder_parameters()).double()
    model.zero_grad(set_to_none=True)
    assert float((gb.mean(0) - g_kl).pow(2).sum()) > 30 * noise


def test_variance_falls_with_l_and_score_function_is_noisiest(small) -> None:
    model, x = small
    stats = {s.estimator: s for s in measure_all(model, x, repeats=20)}
    assert set(stats) == {label for label, _ in COMPARED + SWEEP}
    for e in ("sgvb_a", "sgvb_b"):
        assert stats[f"{e}_L16"].encoder_var < stats[f"{e}_L4"].encoder_var < stats[f"{e}_L1"].encoder_var
        assert stats[f"{e}_L16"].decoder_var < stats[f"{e}_L1"].decoder_var / 4
    assert stats["score_function"].encoder_var > 10 * stats["sgvb_b"].encoder_var
    assert stats["score_function_baseline"].encoder_var < stats["score_function"].encoder_var
    metrics = gradvar_metrics(list(stats.values()))
    assert metrics["gradvar_encoder_sgvb_a_L4"] == stats["sgvb_a_L4"].encoder_var
    assert metrics["gradvar_ratio_encoder_score_function_over_sgvb_b"] == pytest.approx(
        stats["score_function"].encoder_var / stats["sgvb_b"].encoder_var)
    table = gradvar_table(list(stats.values()))
    assert list(table["estimator"]) == [label for label, _ in COMPARED + SWEEP]
    assert all(p.grad is None for p in model.parameters())  # leaves the model as it found it


def test_repeats_must_allow_a_variance(small) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        gradient_stats(*small, B, repeats=1)
