"""bench.evaluation.gradvar and draws: the batched draws give what a loop of backward passes gives, the estimators
compared are unbiased for the same ELBO gradient (so their variances are comparable), and the output follows
GRADVAR_CONTRACT.md (names, minibatches, the per-minibatch CSV)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from bench.evaluation.draws import draw_noise, gradient_moments
from bench.evaluation.gradvar import COLUMNS, COMPARED, SWEEP, gradvar_metrics, measure, minibatches, summary_table
from variants.model import VAE
from variants.registry import Variant, get_variant
from variants.terms import fixed_noise

pytestmark = pytest.mark.usefixtures("one_thread")

B = Variant("b", "", "sgvb_b")
A = Variant("a", "", "sgvb_a")
SF = Variant("sf", "", "score_function")
SFB = Variant("sfb", "", "score_function", baseline=True)


@pytest.fixture(scope="module")
def small(mnist) -> tuple[VAE, Tensor]:
    torch.manual_seed(0)
    x = torch.bernoulli(mnist.test_x[:16], generator=torch.Generator().manual_seed(0))
    return VAE(latent=2, hidden=8).eval(), x


def _flat_grad(params: list[torch.nn.Parameter]) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def _loop(model: VAE, x: Tensor, variant: Variant, repeats: int, seed: int) -> tuple[Tensor, Tensor]:
    """The brute-force reference: one backward pass per draw, on the same noise as the batched draws: [R, P] each."""
    eps = draw_noise(variant, x, model.latent, repeats, seed)
    enc, dec = [], []
    for r in range(repeats):
        model.zero_grad(set_to_none=True)
        with fixed_noise(eps[r]):
            variant.estimate(model, x, None).objective.mean().backward()
        enc.append(_flat_grad(model.encoder_parameters()))
        dec.append(_flat_grad(model.decoder_parameters()))
    model.zero_grad(set_to_none=True)
    return torch.stack(enc).double(), torch.stack(dec).double()


@pytest.mark.parametrize("variant", [B, SFB, get_variant("iwae_dreg_k5"), get_variant("piwae_m8_k8")],
                         ids=["sgvb_b", "score_function_baseline", "iwae_dreg", "piwae"])
def test_batched_draws_match_a_loop_of_backward_passes(small, variant: Variant) -> None:
    model, x = small
    moments = gradient_moments(model, x, variant, repeats=12, seed=3, groups=3, max_rows=40)  # several chunks
    for part, g in zip(("encoder", "decoder"), _loop(model, x, variant, 12, 3), strict=True):
        s = moments[part].summary()
        var = float(g.var(0).sum())
        assert s["variance"] == pytest.approx(var, rel=1e-4)
        assert s["snr"] == pytest.approx((float(g.mean(0).pow(2).sum()) - var / 12) / var, rel=1e-4)
        sd = g.std(0)
        assert s["snr_param"] == pytest.approx(float((g.mean(0).abs()[sd > 0] / sd[sd > 0]).mean()), rel=1e-4)
        rest = moments[part].summary(leave_out=1)  # the jackknife's leave-one-group-out: draws 0-3 and 8-11
        keep = torch.cat([g[:4], g[8:]])
        assert rest["variance"] == pytest.approx(float(keep.var(0).sum()), rel=1e-4)
    assert all(p.grad is None for p in model.parameters())  # leaves the model as it found it


def test_same_noise_gives_a_and_b_the_same_decoder_gradient(small) -> None:
    model, x = small
    a, b = gradient_moments(model, x, A, 20, seed=1), gradient_moments(model, x, B, 20, seed=1)
    assert a["decoder"].summary()["variance"] == pytest.approx(b["decoder"].summary()["variance"], rel=1e-5)
    sf = gradient_moments(model, x, SF, 20, seed=1)  # z drawn the same way, the decoder's usual gradient
    assert sf["decoder"].summary()["variance"] == pytest.approx(b["decoder"].summary()["variance"], rel=1e-5)


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


def test_the_contracts_table_metrics_and_minibatches(small) -> None:
    model, x = small
    test_x = x.repeat(3, 1)  # 48 images: 4 disjoint minibatches of 12
    assert [len(b) for b in minibatches(test_x, 12, 4)] == [12] * 4
    assert torch.equal(minibatches(test_x, 12, 4)[1], test_x[12:24])
    assert [len(b) for b in minibatches(test_x[:5], 12, 4)] == [5]  # fewer than M: one smaller minibatch
    table = measure(model, test_x, repeats=10, batch=12, batches=4)
    labels = [label for label, _ in COMPARED + SWEEP]
    assert list(table.columns) == COLUMNS
    assert len(table) == len(labels) * 2 * 4
    assert set(table["batch"]) == {0, 1, 2, 3} and set(table["part"]) == {"encoder", "decoder"}
    assert {"sgvb_a_stl", "iwae_dreg", "iwae_stl", "iwae_L4", "iwae_L16", "sgvb_b_L16"} <= set(table["label"])
    assert table.loc[table["label"] == "iwae_L16", "samples"].eq(16).all()
    metrics = gradvar_metrics(table)
    enc = table[table["part"] == "encoder"].groupby("label")["variance"].mean()
    for label in labels:
        assert metrics[f"gradvar/encoder/{label}"] == pytest.approx(enc[label])
        assert f"gradsnr/decoder/{label}" in metrics
    assert metrics["gradvar_ratio/encoder/score_function"] == pytest.approx(enc["score_function"] / enc["sgvb_b"])
    assert "gradvar_ratio/encoder/sgvb_b" not in metrics
    v = {label: enc[label] for label in labels}
    for e in ("sgvb_a", "sgvb_b"):
        assert v[f"{e}_L16"] < v[f"{e}_L4"] < v[f"{e}_L1"]
    assert v["score_function"] > 10 * v["sgvb_b"] and v["score_function_baseline"] < v["score_function"]
    assert list(summary_table(table)["label"]) == labels


def test_repeats_must_allow_a_variance(small) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        gradient_moments(*small, B, repeats=1, seed=0)
