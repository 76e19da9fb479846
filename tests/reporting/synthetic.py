"""A synthetic store that follows the contracts bench.run and bench.evaluate write (params, per-epoch metrics,
provenance tags, GRADVAR metrics and evaluation/gradvar.csv), logged with MlflowClient into a real SQLite store:
no training, so a report test takes seconds. Values are a known function of (variant, latent, seed, epoch) plus
seeded noise, so tests can recompute every interval from the store alone."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param, RunTag

from bench.tracking.names import GIT_COMMIT_TAG, GIT_DIRTY_TAG, SWEEP_TAG
from bench.tracking.store import get_or_create_experiment, open_store

SWEEP = "synthetic"
EPOCHS = 3
# name: (estimator, samples, decoder, offset in nats of test_loss)
VARIANTS = {"sgvb_a": ("sgvb_a", 1, "bernoulli", 0.3), "sgvb_b": ("sgvb_b", 1, "bernoulli", 0.0),
            "sgvb_b_l5": ("sgvb_b", 5, "bernoulli", -1.0), "sgvb_b_gauss": ("sgvb_b", 1, "gaussian", 0.0),
            "iwae_k5": ("iwae", 5, "bernoulli", -0.8), "iwae_dreg_k5": ("iwae_dreg", 5, "bernoulli", -0.9),
            "iwae_stl_k5": ("iwae_stl", 5, "bernoulli", -0.85), "sgvb_a_stl": ("sgvb_a_stl", 1, "bernoulli", 0.1)}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GRADVAR_LABELS = {"sgvb_a": ("sgvb_a", 1, 1.2), "sgvb_b": ("sgvb_b", 1, 1.0), "iwae": ("iwae", 5, 0.5),
                  "sgvb_b_L4": ("sgvb_b", 4, 0.25), "iwae_L4": ("iwae", 4, 0.6)}
BATCHES = 4


def runs_plan() -> list[tuple[str, int, int]]:
    """(variant, latent, seed) of the store: the core four at z 2 and 10 with seeds 1-3, the IWAE family at z 2
    (seeds 1-3), sgvb_a_stl with seed 1 only (n = 1 against sgvb_a), and sgvb_a at z 10 seed 7 (paired with
    nothing)."""
    plan = [(v, z, s) for v in ("sgvb_a", "sgvb_b", "sgvb_b_l5", "sgvb_b_gauss") for z in (2, 10) for s in (1, 2, 3)]
    plan += [(v, 2, s) for v in ("iwae_k5", "iwae_dreg_k5", "iwae_stl_k5") for s in (1, 2, 3)]
    plan += [("sgvb_a_stl", 2, 1), ("sgvb_a", 10, 7)]
    return plan


def build(root: Path, gradvar: bool = True, commit_tags: bool = True) -> str:
    """Create the store under root; returns its tracking URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_store(uri)
    exp = get_or_create_experiment(client, "vae-bench")
    rng = random.Random(0)
    for variant, latent, seed in runs_plan():
        est, samples, dec, offset = VARIANTS[variant]
        name = f"{variant}-z{latent}-L{samples}-s{seed}"
        tags = {SWEEP_TAG: SWEEP}
        if commit_tags and variant != "sgvb_b_gauss":  # the Gaussian runs stand for runs made before the tags
            tags |= {GIT_COMMIT_TAG: COMMIT, GIT_DIRTY_TAG: "false"}
        run = client.create_run(exp, run_name=name, tags=tags)
        params = {"variant": variant, "estimator": est, "samples": samples, "decoder": dec, "hidden": 400,
                  "latent": latent, "epochs": EPOCHS, "batch_size": 128, "lr": 0.001, "seed": seed, "device": "cpu",
                  "binarize": "none", "limit_train": 2000, "data": "mnist", "data_digest": "x"}
        if dec == "gaussian":
            params |= {"gaussian_variance": 0.01, "learn_variance": False}
        seed_effect = rng.gauss(0, 2)  # shared by every variant of this seed: what pairing removes
        metrics = []
        for e in range(1, EPOCHS + 1):
            loss = 100 + 60 / e + (20 - latent) + offset + seed_effect + rng.gauss(0, 0.3)
            vals = {"train_loss": loss + 1, "train_recon": loss - 20, "train_kld": 21.0, "test_loss": loss,
                    "test_recon": loss - 20, "test_kld": 20 + 0.1 * seed, "test_mse": 0.03 + 0.01 / e,
                    "epoch_seconds": 2.0 * samples ** 0.5 + rng.random(), "train_samples_per_second": 1000.0}
            metrics += [Metric(k, v, 1_700_000_000_000 + e, e) for k, v in vals.items()]
        if est.startswith("iwae"):
            params["nll_samples"] = 1000
            metrics += [Metric("test_nll", loss - 3 + rng.gauss(0, 0.1), 0, EPOCHS),
                        Metric("active_units", float(latent - (est == "iwae")), 0, EPOCHS)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                         tags=[RunTag("mlflow.runName", name)])
        if gradvar and variant in ("sgvb_b", "sgvb_a") and seed != 7:
            log_gradvar(client, run.info.run_id, rng)
        client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def log_gradvar(client, run_id: str, rng: random.Random) -> None:  # noqa: ANN001
    """The GRADVAR contract: per-minibatch CSV artifact and the metrics (means over minibatches)."""
    rows = []
    for label, (est, samples, scale) in GRADVAR_LABELS.items():
        for part in ("encoder", "decoder"):
            for b in range(BATCHES):
                rows.append({"label": label, "estimator": est, "samples": samples, "part": part, "batch": b,
                             "variance": 50.0 * scale * rng.lognormvariate(0, 0.2), "snr": 1.0})
    df = pd.DataFrame(rows)
    means = df.groupby(["part", "label"])["variance"].mean()
    client.log_batch(run_id, metrics=[Metric(f"gradvar/{p}/{lab}", float(v), 0, EPOCHS) for (p, lab), v in
                                      means.items()],
                     params=[Param("gradvar_repeats", "10"), Param("gradvar_batches", str(BATCHES)),
                             Param("gradvar_batch_size", "128")])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gradvar.csv"
        df.to_csv(path, index=False)
        client.log_artifact(run_id, str(path), "evaluation")
