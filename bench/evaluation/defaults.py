"""The evaluation commands' default settings, in a module that imports nothing: bench.evaluate builds its --help
from these before torch and MLflow load (issue 17). The modules that use them re-export their own."""

from __future__ import annotations

import argparse

NLL_SAMPLES = 1000  # bench.evaluate's --nll-samples; bench.run's defaults to 0 (off)
GRADVAR_REPEATS = 100  # R, noise draws per estimator (bench.evaluation.gradvar)

# AIS (bench.evaluation.ais)
AIS_SEED = 6000  # fixed noise: the same model and images give the same test_nll_ais
AIS_STEPS = 1000
AIS_CHAINS = 16
AIS_IMAGES = 1000
AIS_LEAPFROG = 5
AIS_MAX_IMAGES = 10000

# bench.snr (bench.evaluation.snr)
SNR_K_GRID = (1, 3, 10, 30, 100, 300, 1000)
SNR_IMAGES = 8  # M, as in the first measurements
SNR_REPEATS = 100  # R
SNR_SEED = 2018
SNR_GROUPS = 10  # jackknife groups of draws

GAP_STEPS = 500  # Adam steps of q* per image (bench.evaluation.gaps)
LADDER = (1, 10, 100, 1000)  # the K of --nll-ladder (bench.evaluation.likelihood_study)
BDMC_IMAGES = 100  # --bdmc without a count


def parse_images(text: str) -> int:
    """--ais-images: a count from 1 to 10,000, or ``all`` (10,000)."""
    if text.strip().lower() == "all":
        return AIS_MAX_IMAGES
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give 1 to {AIS_MAX_IMAGES} or 'all'") from None
    if not 1 <= value <= AIS_MAX_IMAGES:
        raise argparse.ArgumentTypeError(f"{value} is out of range; give 1 to {AIS_MAX_IMAGES} test images or 'all'")
    return value
