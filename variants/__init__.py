"""What vae-bench compares: variants as data, their model, likelihoods and ELBO estimators."""

from variants.registry import REGISTRY, Variant, get_variant

__all__ = ["REGISTRY", "Variant", "get_variant"]
