"""bench.run's variant from its command line, checked without torch (bench.run checks it before loading)."""

from __future__ import annotations

import argparse

from bench.errors import UserError
from variants.registry import Variant, get_variant


def variant_from_args(args: argparse.Namespace) -> Variant:
    try:
        variant = get_variant(args.variant).replace(
            samples=args.samples, decoder=args.decoder, hidden=args.hidden,
            gaussian_variance=args.gaussian_variance, learn_variance=args.learn_variance)
    except (KeyError, ValueError) as e:
        raise UserError(str(e).strip("'\"")) from None
    if variant.decoder != "gaussian" and (args.gaussian_variance is not None or args.learn_variance):
        raise UserError(f"--gaussian-variance and --learn-variance set the Gaussian decoder's c, and {variant.name} "
                        "decodes with a Bernoulli; add --decoder gaussian or pick a gaussian variant")
    return variant
