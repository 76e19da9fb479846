"""The names a variant may use (its estimator, its decoder likelihood) without the code behind them.

The registry checks a variant against these names, and ``--help`` and ``--list`` print them, without importing
torch (a second and more of start-up: issue 17). The code is in variants.estimators.ESTIMATORS and
variants.likelihoods.LIKELIHOODS, keyed by exactly these names (tests/variants/test_registry.py checks it);
a plugin adds to both (variants.plugins).
"""

from __future__ import annotations

ESTIMATOR_NAMES: list[str] = ["sgvb_a", "sgvb_b", "score_function", "sgvb_a_stl", "iwae", "iwae_stl", "iwae_dreg",
                              "miwae", "piwae", "ciwae"]
LIKELIHOOD_NAMES: list[str] = ["bernoulli", "gaussian"]
BUILT_IN_ESTIMATORS = tuple(ESTIMATOR_NAMES)  # plugins append to ESTIMATOR_NAMES, never take one of these
# The option axes (variants.registry.OPTIONS) each built-in estimator's signature names: a run's params are known
# without importing the estimators (bench.run makes its run before torch loads). Plugins' are read from their code.
ESTIMATOR_OPTIONS: dict[str, tuple[str, ...]] = {"score_function": ("baseline",), "miwae": ("groups",),
                                                 "piwae": ("groups",), "ciwae": ("beta",)}

# c = 0.01 (sigma = 0.1 grey levels): about the per-pixel squared error a 20-d VAE reaches on MNIST,
# so the squared-error term and the KL are on comparable scales. c = 1 (the "plain MSE" choice) makes
# the data term ~100x weaker than the KL and collapses most latent dimensions.
DEFAULT_GAUSSIAN_VARIANCE = 0.01
