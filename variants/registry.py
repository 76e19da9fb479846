"""The registry: every variant vae-bench compares, as data. Adding a variant is one entry here."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

# Names only: the registry, --help and --list load without torch; the code behind a name is imported on use.
from variants.catalog import DEFAULT_GAUSSIAN_VARIANCE, ESTIMATOR_NAMES, LIKELIHOOD_NAMES

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from variants.model import VAE
    from variants.terms import LossTerms


@dataclass(frozen=True)
class Variant:
    """The axes along which variants differ. The latent size is chosen per run, not per variant."""

    name: str
    description: str
    estimator: str = "sgvb_b"  # a key of variants.estimators.ESTIMATORS
    samples: int = 1  # L reparameterised samples per datapoint (k for IWAE)
    decoder: str = "bernoulli"  # bernoulli | gaussian
    hidden: int = 400  # MLP width, 784-H-z and z-H-784 as in the seed
    gaussian_variance: float = DEFAULT_GAUSSIAN_VARIANCE  # c in N(x; f(z), c I), gaussian decoder only
    learn_variance: bool = False  # learn c (one scalar) instead of fixing it
    baseline: bool = False  # score_function only: subtract a leave-one-out baseline
    groups: int = 1  # miwae / piwae: M, the number of K-sample IWAE bounds averaged (Rainforth et al. 2018)
    beta: float = 0.5  # ciwae: the weight of the K-sample ELBO against the IWAE bound (Rainforth et al. 2018)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATOR_NAMES:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATOR_NAMES)}")
        if self.decoder not in LIKELIHOOD_NAMES:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose from {', '.join(LIKELIHOOD_NAMES)}")
        if self.samples < 1:
            raise ValueError(f"samples must be a positive integer, got {self.samples}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {self.hidden}")
        if not self.gaussian_variance > 0:
            raise ValueError(f"gaussian variance must be positive, got {self.gaussian_variance}")
        if self.groups < 1:
            raise ValueError(f"groups must be a positive integer, got {self.groups}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {self.beta}")

    def replace(self, **axes: object) -> Variant:
        """This variant with some axes overridden (None leaves an axis as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in axes.items() if v is not None})

    def axes(self) -> dict[str, object]:
        """Every axis, for the run's params (the description is not an axis)."""
        d = dataclasses.asdict(self)
        d.pop("description")
        d["variant"] = d.pop("name")
        if self.decoder != "gaussian":
            d.pop("gaussian_variance")
            d.pop("learn_variance")
        for option in OPTIONS:
            if option not in self.options():
                d.pop(option)
        return d

    def options(self) -> dict[str, object]:
        """The option axes this variant's estimator takes (the keyword arguments its signature names): a built-in
        estimator's from the catalog (no torch), a plugin's from its code."""
        from variants.catalog import BUILT_IN_ESTIMATORS, ESTIMATOR_OPTIONS

        if self.estimator in BUILT_IN_ESTIMATORS:
            names: object = ESTIMATOR_OPTIONS.get(self.estimator, ())
        else:
            from variants.estimators import ESTIMATORS

            names = inspect.signature(ESTIMATORS[self.estimator]).parameters
        return {o: getattr(self, o) for o in OPTIONS if o in names}

    def build_model(self, latent: int) -> VAE:
        from variants.model import VAE

        return VAE(latent=latent, hidden=self.hidden, decoder=self.decoder,
                   gaussian_variance=self.gaussian_variance, learn_variance=self.learn_variance)

    def estimate(self, model: VAE, x: Tensor, gen: torch.Generator | None = None) -> LossTerms:
        from variants.estimators import ESTIMATORS

        return ESTIMATORS[self.estimator](model, x, self.samples, gen, **self.options())

    def draws(self) -> int:
        """Noise draws per datapoint (L, or M*K for MIWAE and PIWAE)."""
        return self.samples * (self.groups if "groups" in self.options() else 1)


OPTIONS = ("baseline", "groups", "beta")  # axes passed to the estimators whose signatures name them


def _registry(*variants: Variant) -> dict[str, Variant]:
    return {v.name: v for v in variants}


REGISTRY: dict[str, Variant] = _registry(
    Variant("sgvb_a", "SGVB estimator A: log p(x,z) - log q(z|x), all sampled; L=1, Bernoulli", "sgvb_a"),
    Variant("sgvb_b", "SGVB estimator B: closed-form KL + sampled log p(x|z); L=1, Bernoulli (the seed)"),
    Variant("sgvb_a_l5", "SGVB A with L=5 samples per datapoint, Bernoulli", "sgvb_a", samples=5),
    Variant("sgvb_b_l5", "SGVB B with L=5 samples per datapoint, Bernoulli", samples=5),
    Variant("sgvb_b_gauss", "SGVB B, Gaussian decoder N(x; f(z), cI) with fixed c=0.01", decoder="gaussian"),
    Variant("sgvb_b_gauss_learned", "SGVB B, Gaussian decoder with its variance c learned",
            decoder="gaussian", learn_variance=True),
    Variant("score_function", "Naive score-function (REINFORCE) encoder gradient, closed-form KL",
            "score_function"),
    Variant("score_function_baseline", "Score-function encoder gradient with a leave-one-out baseline",
            "score_function", baseline=True),
    Variant("iwae_k5", "Importance-weighted bound (Burda et al.) with k=5 samples", "iwae", samples=5),
    Variant("iwae_k50", "Importance-weighted bound (Burda et al.) with k=50 samples", "iwae", samples=50),
    Variant("sgvb_a_stl", "SGVB A, sticking the landing (Roeder et al. 2017): no score term in the encoder gradient",
            "sgvb_a_stl"),
    Variant("iwae_stl_k5", "IWAE k=5 with sticking-the-landing encoder gradient (biased for k>1, Tucker et al.)",
            "iwae_stl", samples=5),
    Variant("iwae_stl_k50", "IWAE k=50 with sticking-the-landing encoder gradient (biased for k>1, Tucker et al.)",
            "iwae_stl", samples=50),
    Variant("iwae_dreg_k5", "IWAE k=5, doubly reparameterized encoder gradient (Tucker et al. 2018)",
            "iwae_dreg", samples=5),
    Variant("iwae_dreg_k50", "IWAE k=50, doubly reparameterized encoder gradient (Tucker et al. 2018)",
            "iwae_dreg", samples=50),
    Variant("miwae_m8_k8", "MIWAE(M=8, K=8) (Rainforth et al. 2018): the mean of 8 IWAE bounds of 8 samples",
            "miwae", samples=8, groups=8),
    Variant("piwae_m8_k8", "PIWAE(M=8, K=8) (Rainforth et al. 2018): decoder on IWAE(64), encoder on MIWAE(8, 8)",
            "piwae", samples=8, groups=8),
    Variant("ciwae_k64", "CIWAE(beta=0.5) (Rainforth et al. 2018): 0.5 ELBO + 0.5 IWAE bound on 64 samples",
            "ciwae", samples=64, beta=0.5),
)


def get_variant(name: str) -> Variant:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; choose from {', '.join(REGISTRY)}") from None


# Variants, estimators and likelihoods from outside the package (variants.plugins), loaded once with the registry.
from variants.plugins import load_all  # noqa: E402  (after REGISTRY: plugins register into it)

load_all()
