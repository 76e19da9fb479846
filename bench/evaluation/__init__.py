"""Measuring a model: the per-epoch test ELBO, the test NLL, gradient variance, the latent space, digit pictures,
and the evaluation of a finished run (run_evaluation.py)."""
