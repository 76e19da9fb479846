"""scripts/check_intervals.py recomputes a report's paired intervals from the store without the report's code: on a
small real SQLite store (runs logged with MlflowClient, no training; one run reused from another sweep, one
test_nll in an analysis run) it agrees with bench.report's tables/comparisons.csv, and it fails, naming the row,
on a table whose interval or whose store differs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from bench.reporting.build import render
from bench.reporting.data import load
from bench.tracking.analyses import analysis_run
from bench.tracking.names import MEMBER_TAG, SWEEP_TAG
from tests.conftest import CODE, REPO

SWEEP = "iv"
SCRIPT = REPO / "scripts" / "check_intervals.py"


def build(uri: str) -> dict[tuple[str, int], str]:
    """sgvb_a and sgvb_b at latent 2, seeds 1-3: (variant, seed) -> run id. sgvb_b seed 3 was made by another sweep
    and reused by this one (bench.in_sweep only); sgvb_a seed 1's test_nll sits in its analysis run."""
    client = MlflowClient(uri)
    exp = client.create_experiment("vae-bench")
    rng = random.Random(19)
    ids = {}
    for variant in ("sgvb_a", "sgvb_b"):
        for seed in (1, 2, 3):
            reused = (variant, seed) == ("sgvb_b", 3)
            tags = {MEMBER_TAG.format(SWEEP): "true", SWEEP_TAG: "other" if reused else SWEEP}
            run = client.create_run(exp, run_name=f"{variant}-z2-L1-s{seed}", tags=tags)
            params = {"variant": variant, "estimator": variant, "samples": "1", "decoder": "bernoulli",
                      "hidden": "400", "latent": "2", "epochs": "2", "batch_size": "128", "lr": "0.001",
                      "seed": str(seed), "device": "cpu", "binarize": "none", "limit_train": "500", "data": "mnist",
                      "data_digest": "x"}
            base = 150.0 + seed + (variant == "sgvb_a") * 0.5
            metrics = [Metric(m, base + rng.gauss(0, 0.3) - e, 0, e) for e in (1, 2)
                       for m in ("train_loss", "test_loss", "test_kld", "test_mse", "epoch_seconds")]
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
            nll = [Metric("test_nll", base - 4 + rng.gauss(0, 0.3), 0, 2)]
            if (variant, seed) == ("sgvb_a", 1):  # a likelihood analysis run holds it (bench.tracking.analyses)
                analysis = analysis_run(client, run.info.run_id, "likelihood")
                client.log_batch(analysis.run_id, metrics=nll)
                analysis.finish()
            else:
                client.log_batch(run.info.run_id, metrics=nll)
            client.set_terminated(run.info.run_id, "FINISHED")
            ids[(variant, seed)] = run.info.run_id
    return ids


def check(uri: str, csv: Path, sweep: str = SWEEP) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(csv), "--tracking-uri", uri, "--sweep", sweep],
                          env={**os.environ, **CODE}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict[tuple[str, int], str]]:
    root = tmp_path_factory.mktemp("intervals")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = build(uri)
    data = load(MlflowClient(uri), sweep=SWEEP)
    _, ctx = render(data, root / "report", "2024-01-01", figures=False)  # the report's own numbers, no figures
    csv = root / "comparisons.csv"
    ctx.tables.frames["comparisons"].to_csv(csv, index=False)
    return uri, csv, ids


def test_the_reports_intervals_are_recomputed_from_the_store(report: tuple[str, Path, dict]) -> None:
    uri, csv, _ = report
    table = pd.read_csv(csv)
    pairs = table[(table["variant_a"] == "sgvb_a") & (table["variant_b"] == "sgvb_b") & (table["n"] == 3)]
    assert {"test_loss", "test_nll"} <= set(pairs["metric"])  # the reused run and the analysis run counted in
    done = check(uri, csv)
    assert done.returncode == 0, done.stdout + done.stderr
    checked = int((table["n"] >= 2).sum())
    assert f"{checked} of {checked} intervals match" in done.stdout


def test_a_table_that_differs_from_the_store_fails_naming_the_row(report: tuple[str, Path, dict],
                                                                  tmp_path: Path) -> None:
    uri, csv, ids = report
    table = pd.read_csv(csv)
    row = table.index[(table["metric"] == "test_loss") & (table["n"] == 3)][0]
    table.loc[row, "ci_high"] += 1e-3  # an interval a nat's thousandth too wide
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    done = check(uri, bad)
    assert done.returncode == 1
    checked = int((table["n"] >= 2).sum())
    assert f"{checked - 1} of {checked} intervals match" in done.stdout
    assert "sgvb_a:sgvb_b z=2 test_loss: recomputed" in done.stdout


def test_a_store_changed_after_the_report_fails(report: tuple[str, Path, dict], tmp_path: Path) -> None:
    uri, csv, ids = report
    moved = tmp_path / "moved.db"
    moved.write_bytes(Path(uri.removeprefix("sqlite:///")).read_bytes())  # a copy: the other tests keep theirs
    moved_uri = f"sqlite:///{moved}"
    # sgvb_a seed 1's test_nll logged again in its analysis run: the latest value is no longer the report's
    client = MlflowClient(moved_uri)
    (analysis,) = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id],
                                     "tags.`bench.analysis` = 'likelihood'")
    client.log_batch(analysis.info.run_id, metrics=[Metric("test_nll", 100.0, 1, 2)])
    done = check(moved_uri, csv)
    assert done.returncode == 1 and "test_nll: recomputed" in done.stdout
    assert "test_loss: recomputed" not in done.stdout
    # and a sweep with no runs is said so, with a failing status
    empty = check(uri, csv, sweep="nothing")
    assert empty.returncode == 1 and "no FINISHED runs of sweep 'nothing'" in empty.stderr
