"""The variant registry: every entry builds and trains a step; axes override; bad axes are refused."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from bench.core.data import MNIST
from variants import REGISTRY, Variant, get_variant
from variants.estimators import ESTIMATORS
from variants.likelihoods import Bernoulli, Gaussian

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_keys_are_the_variants_names_with_descriptions() -> None:
    assert len(REGISTRY) >= 2
    for name, v in REGISTRY.items():
        assert isinstance(v, Variant)
        assert v.name == name
        assert v.description.strip() and "\n" not in v.description
        assert v.estimator in ESTIMATORS


def test_the_issues_presets_exist() -> None:
    for name, estimator in (("sgvb_a", "sgvb_a"), ("sgvb_b", "sgvb_b")):
        v = get_variant(name)
        assert (v.estimator, v.samples, v.decoder, v.hidden) == (estimator, 1, "bernoulli", 400)
    assert any(v.samples > 1 and v.estimator in ("sgvb_a", "sgvb_b") for v in REGISTRY.values())
    assert any(v.decoder == "gaussian" for v in REGISTRY.values())


def test_seed_architecture_is_784_400_z() -> None:
    model = get_variant("sgvb_b").build_model(20)
    shapes = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    assert shapes == [(400, 784), (400,), (40, 400), (40,), (400, 20), (400,), (784, 400), (784,)]
    mu, logvar = model.encode(torch.rand(3, 784))
    assert mu.shape == logvar.shape == (3, 20)
    assert model.decode(mu).shape == (3, 784)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_variant_builds_and_takes_a_training_step(name: str, mnist: MNIST) -> None:
    variant = get_variant(name)
    torch.manual_seed(0)
    model = variant.build_model(3)
    x = mnist.train_x[:16]
    terms = variant.estimate(model, x, torch.Generator().manual_seed(1))
    assert terms.loss.shape == (16,)
    assert torch.isfinite(terms.loss).all() and torch.isfinite(terms.objective).all()
    torch.testing.assert_close(terms.loss, terms.recon + terms.kld)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    terms.objective.sum().backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert all(p.grad.abs().sum() > 0 for p in model.encoder_parameters() + model.decoder_parameters())
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_learned_variance_is_trained_and_fixed_variance_is_not() -> None:
    learned = get_variant("sgvb_b").replace(decoder="gaussian", learn_variance=True).build_model(2)
    fixed = get_variant("sgvb_b").replace(decoder="gaussian").build_model(2)
    assert isinstance(learned.likelihood, Gaussian) and learned.likelihood.log_c.requires_grad
    assert not fixed.likelihood.log_c.requires_grad
    assert learned.likelihood.log_c in set(learned.decoder_parameters())


def test_replace_overrides_axes_and_none_keeps_them() -> None:
    base = get_variant("sgvb_b")
    v = base.replace(samples=3, decoder="gaussian", hidden=50, gaussian_variance=0.5)
    assert (v.name, v.estimator, v.samples, v.decoder, v.hidden, v.gaussian_variance) == (
        "sgvb_b", "sgvb_b", 3, "gaussian", 50, 0.5)
    assert base.samples == 1 and base.decoder == "bernoulli"  # the registry entry is untouched
    assert base.replace(samples=None, decoder=None) == base
    model = v.build_model(7)
    assert isinstance(model.likelihood, Gaussian) and model.likelihood.variance == pytest.approx(0.5)
    assert model.fc1.out_features == 50 and model.latent == 7
    assert isinstance(base.build_model(2).likelihood, Bernoulli)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.samples = 2  # type: ignore[misc]


def test_samples_override_changes_the_number_of_draws(mnist: MNIST) -> None:
    """--samples L really means L draws: the L-sample estimate is the mean of the L one-sample draws."""
    torch.manual_seed(0)
    v = get_variant("sgvb_b").replace(samples=4)
    model = v.build_model(2)
    x = mnist.test_x[:5]
    terms = v.estimate(model, x, torch.Generator().manual_seed(3))
    mu, logvar = model.encode(x)
    eps = torch.randn((4, *mu.shape), generator=torch.Generator().manual_seed(3))
    recon = -model.likelihood.log_prob(x, model.decode(mu + torch.exp(0.5 * logvar) * eps)).mean(0)
    torch.testing.assert_close(terms.recon, recon, rtol=1e-5, atol=1e-3)


def test_axes_hold_every_axis_for_the_run_params() -> None:
    axes = get_variant("sgvb_b").axes()
    assert {"variant", "estimator", "samples", "decoder", "hidden"} <= set(axes)
    assert "description" not in axes and axes["variant"] == "sgvb_b"
    gauss = get_variant("sgvb_b").replace(decoder="gaussian").axes()
    assert {"gaussian_variance", "learn_variance"} <= set(gauss)
    assert "baseline" in get_variant("score_function").axes()


@pytest.mark.parametrize("axes, message", [
    ({"estimator": "sgvb_c"}, "unknown estimator"),
    ({"decoder": "poisson"}, "unknown decoder"),
    ({"samples": 0}, "samples"),
    ({"samples": -3}, "samples"),
    ({"hidden": 0}, "hidden"),
    ({"gaussian_variance": 0.0}, "variance"),
    ({"gaussian_variance": -1.0}, "variance"),
])
def test_invalid_axes_raise(axes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Variant("bad", "a bad variant", **axes)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        get_variant("sgvb_b").replace(**axes)


def test_error_messages_name_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="bernoulli, gaussian"):
        Variant("bad", "x", decoder="poisson")
    with pytest.raises(ValueError, match="sgvb_a, sgvb_b"):
        Variant("bad", "x", estimator="nope")
    with pytest.raises(KeyError, match="sgvb_b") as e:
        get_variant("no_such_variant")
    assert "no_such_variant" in str(e.value)


def test_option_axes_are_params_only_of_the_estimators_that_take_them() -> None:
    assert get_variant("miwae_m8_k8").axes()["groups"] == 8 and "beta" not in get_variant("miwae_m8_k8").axes()
    assert get_variant("piwae_m8_k8").draws() == 64 and get_variant("iwae_k5").draws() == 5
    assert get_variant("ciwae_k64").axes()["beta"] == 0.5 and "groups" not in get_variant("ciwae_k64").axes()
    for name in ("sgvb_b", "iwae_k5", "iwae_dreg_k5", "sgvb_a_stl"):
        assert not {"groups", "beta", "baseline"} & set(get_variant(name).axes())
    estimators = {v.estimator for v in REGISTRY.values()}
    assert {"iwae", "iwae_dreg", "iwae_stl", "sgvb_a_stl", "piwae", "miwae", "ciwae"} <= estimators
    with pytest.raises(ValueError, match="groups"):
        get_variant("miwae_m8_k8").replace(groups=0)
    with pytest.raises(ValueError, match="beta"):
        get_variant("ciwae_k64").replace(beta=1.5)


@pytest.mark.parametrize("name", ["iwae_dreg_k5", "piwae_m8_k8", "ciwae_k64", "sgvb_a_stl"])
def test_new_estimators_are_tuned_over_the_same_dimensions(name: str) -> None:
    import optuna

    from variants.search_space import dimensions, suggest

    variant = get_variant(name)
    assert [d.name for d in dimensions(variant)] == ["lr", "batch_size", "hidden"]
    trial = optuna.create_study().ask()
    tuned, harness = suggest(trial, variant)
    assert (tuned.estimator, tuned.samples, tuned.groups, tuned.beta) == (
        variant.estimator, variant.samples, variant.groups, variant.beta)
    assert set(harness) == {"lr", "batch_size"}


def test_the_catalog_names_exactly_the_code_it_stands_for() -> None:
    """variants.catalog lets the registry, --help and --list load without torch; its names must be the keys of the
    estimators and likelihoods actually implemented (plugins add to both)."""
    from variants.catalog import BUILT_IN_ESTIMATORS, ESTIMATOR_NAMES, ESTIMATOR_OPTIONS, LIKELIHOOD_NAMES
    from variants.likelihoods import LIKELIHOODS
    from variants.registry import OPTIONS

    assert list(ESTIMATORS) == ESTIMATOR_NAMES
    assert list(LIKELIHOODS) == LIKELIHOOD_NAMES
    for name in BUILT_IN_ESTIMATORS:  # the option axes each signature names, as the catalog says
        taken = tuple(o for o in OPTIONS if o in inspect.signature(ESTIMATORS[name]).parameters)
        assert taken == ESTIMATOR_OPTIONS.get(name, ()), name
