"""The fast version of scripts/check_pairing.py: a small real SQLite store (runs logged with MlflowClient, no
training) whose runs differ in one training setting at a time; bench.report with and without --compare; every
pair of tables/comparisons.csv checked against the store's params by the script's own code, not the report's."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bench.reporting.build import render
from bench.reporting.data import load
from bench.reporting.pairing import parse_pairs
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("check_pairing", REPO / "scripts" / "check_pairing.py")
check_pairing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_pairing)

BASE = {"hidden": "400", "latent": "2", "epochs": "2", "batch_size": "128", "lr": "0.001", "device": "cpu",
        "precision": "fp32", "binarize": "none", "limit_train": "500", "data": "mnist", "data_digest": "x",
        "decoder": "bernoulli", "samples": "1", "validation": "0"}
# One training setting changed at a time (None: the base), and an evaluation-only one that must not split.
CHANGES = [{}, {"epochs": "3"}, {"lr": "0.002"}, {"samples": "2"}, {"batch_size": "64"}, {"binarize": "static"},
           {"hidden": "200"}, {"limit_train": "400"}, {"precision": "bf16"}, {"warmup": "5"}]


def build(root: Path) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("vae-bench")
    rng = random.Random(18)
    for i, change in enumerate(CHANGES):
        for variant, est in (("sgvb_a", "sgvb_a"), ("sgvb_b", "sgvb_b")):
            for seed in (1, 2):
                p = BASE | {"variant": variant, "estimator": est, "seed": str(seed)} | change
                if (i, variant, seed) == (0, "sgvb_b", 1):
                    p |= {"snr_images": "8", "snr_repeats": "100"}  # had an SNR study: still the base config
                run = client.create_run(exp, run_name=f"{variant}-{i}-s{seed}", tags={"bench.sweep": "pairing"})
                metrics = [Metric(m, 100.0 + 3 * i + seed + rng.gauss(0, 0.3) + (est == "sgvb_a"), 0, e)
                           for e in range(1, int(p["epochs"]) + 1)
                           for m in ("train_loss", "test_loss", "test_kld", "test_mse", "epoch_seconds")]
                client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in p.items()],
                                 tags=[RunTag("mlflow.runName", f"{variant}-{i}-s{seed}")])
                client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def test_no_comparison_row_pairs_runs_that_differ_outside_its_axis(tmp_path: Path) -> None:
    uri = build(tmp_path)
    params = check_pairing.params_of(uri)
    rows, checked, bad = 0, 0, []
    data = load(MlflowClient(uri), sweep="pairing")
    for i, compare in enumerate([[], ["sgvb_a:sgvb_b"]]):
        # The report's own path without its figures (seconds instead of a minute); the script runs bench.report.
        _, ctx = render(data, tmp_path / f"r{i}", "2024-01-01", figures=False, pairs=parse_pairs(compare))
        csv = ctx.tables.frames["comparisons"].astype({"seeds": str, "runs_a": str, "runs_b": str})
        c, b = check_pairing.offending(csv, params)
        rows, checked, bad = rows + len(csv), checked + c, bad + b
        if compare:
            user = csv[(csv["comparison"] == "user") & (csv["metric"] == "test_loss")]
            assert len(user) == len(CHANGES) and set(user["n"]) == {2}  # each configuration with its twin
    assert bad == [] and checked >= 2 * 2 * len(CHANGES) * 2, (rows, checked)
    # The check can fail: a planted pair across learning rates is caught.
    lr = {rid for rid, p in params.items() if p.get("lr") == "0.002" and p["variant"] == "sgvb_b"}
    row = csv[(csv["comparison"] == "user") & (csv["n"] == 2)].iloc[[0]].copy()
    seeds = row["seeds"].item().split()
    row["runs_b"] = ";".join(sorted(lr, key=lambda r: params[r]["seed"]))
    assert all(params[r]["seed"] == s for r, s in zip(row["runs_b"].item().split(";"), seeds, strict=True))
    _, planted = check_pairing.offending(row, params)
    assert planted and all("lr 0.001/0.002" in line or "lr 0.002/0.001" in line for line in planted), planted
