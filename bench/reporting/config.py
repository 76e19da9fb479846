"""What "a configuration" is, in one place: the params that changed what was trained. Runs of one configuration
that differ only in their seed are repeats; pairs (the axis comparisons and --compare alike) are runs whose
configurations are equal except along the compared axis, and that share a seed.

A param is configuration unless it is listed below as a repeat key or an evaluation setting. The default for a
param the report does not know is *configuration*: a new evaluation setting then at worst splits one configuration
into two (fewer pairs, and the labels show the key), while a new training setting treated as evaluation would
silently average and pair runs that were trained differently. The first error is visible; the second is not.
"""

from __future__ import annotations

from collections.abc import Iterable

# Runs differing only in these are repeats of one another (the seed pairs them; the device does not change the
# maths of a run, only its floating-point order).
REPEAT_PARAMS = frozenset({"seed", "device"})
# Settings of measurements made on a trained model (bench.evaluate, bench.snr, bench.run --snr-every's fixed
# minibatch and noise stream): they change no weight of the run.
EVALUATION_PARAMS = frozenset({"nll_samples", "gradvar_repeats", "gradvar_batches", "gradvar_batch_size",
                               "snr_images", "snr_repeats", "snr_k_grid", "snr_seed", "snr_every",
                               # bench.evaluate --ais / --bdmc / --gaps (bench.evaluation.likelihood_study)
                               "ais_steps", "ais_chains", "ais_images", "ais_leapfrog", "ais_schedule", "ais_start",
                               "ais_seed", "bdmc_images", "gap_opt_steps", "gap_elbo_samples"})
# Configuration, but reported in their own columns rather than in a label's key=value list.
OWN_COLUMNS = frozenset({"variant", "latent"})


def is_configuration(param: str) -> bool:
    """True for every param that may change training, including params this module does not know."""
    return param not in REPEAT_PARAMS and param not in EVALUATION_PARAMS


def config_params(params: Iterable[str]) -> list[str]:
    """The configuration params other than variant and latent (which every grouping keys on already)."""
    return sorted(p for p in set(params) if is_configuration(p) and p not in OWN_COLUMNS)
