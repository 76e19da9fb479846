"""The report's Likelihoods section on the synthetic store (tests/reporting/synthetic.py) with AIS numbers on the
training runs and gap / ladder metrics in real "likelihood" analysis runs: every interval recomputed from MLflow."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats as sps

from bench import report
from bench.evaluation.likelihood_study import ANALYSIS, LikelihoodOptions
from bench.tracking.analyses import analysis_run
from tests.reporting import synthetic

SLACK = {"iwae_k5": 0.4, "iwae_dreg_k5": 0.05, "iwae_stl_k5": 0.4}  # L_K - AIS the store is built with


@dataclass
class Built:
    uri: str
    out: Path
    text: str
    values: pd.DataFrame  # variant, seed, test_nll, test_nll_ais, gaps (from MLflow, independently)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("likelihoods")
    uri = synthetic.build(root, gradvar=False)
    client = MlflowClient(uri)
    rng = random.Random(1)
    exp = client.search_experiments()[0].experiment_id
    for r in client.search_runs([exp]):
        v = r.data.params["variant"]
        if v not in SLACK:
            continue
        ais = r.data.metrics["test_nll"] - SLACK[v] + rng.gauss(0, 0.02)
        # the settings bench.evaluate logs as params, BDMC on seed 1 only (as make_example_report.sh does): settings
        # of a measurement, not configuration, so they must not split a variant's runs into labels
        opts = LikelihoodOptions(bdmc_images=5 if r.data.params["seed"] == "1" else 0, gaps=True)
        client.log_batch(r.info.run_id, params=[Param(k, str(x)) for k, x in opts.settings().items()])
        client.log_batch(r.info.run_id, metrics=[Metric("test_nll_ais", ais, 0, synthetic.EPOCHS),
                                                 Metric("bdmc_gap", 0.05 + rng.random() * 0.01, 0, synthetic.EPOCHS)])
        elbo = -r.data.metrics["test_loss"]
        amort = 1.0 + rng.gauss(0, 0.1)
        child = analysis_run(client, r.info.run_id, ANALYSIS)
        child.log_metrics({"gap/amortization": amort, "gap/approximation": -ais - elbo - amort,
                           "nll_ladder/K1": -elbo, "nll_ladder/K1000": r.data.metrics["test_nll"]},
                          step=synthetic.EPOCHS)
        child.finish()
    out = root / "report"
    assert report.main(["--tracking-uri", uri, "--sweep", synthetic.SWEEP, "--out", str(out), "--date",
                        "2024-01-01"]) == 0
    values = pd.DataFrame([{"run_id": r.info.run_id, "variant": r.data.params["variant"],
                            "latent": int(r.data.params["latent"]), "seed": int(r.data.params["seed"]),
                            **r.data.metrics} for r in client.search_runs([exp], filter_string="tags.`bench.analysis`"
                                                                                              " IS NULL")])
    return Built(uri, out, (out / "report.md").read_text(), values)


def t_interval(v: np.ndarray) -> tuple[float, float, float]:
    half = sps.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def test_section_table_matches_the_store(built: Built) -> None:
    assert "## Likelihoods" in built.text
    # which images each number is on: the settings the runs logged, read back
    assert ("AIS (T = 1000, C = 16, from the prior), the gaps, the IWAE NLL at each K of the ladder and the figure's "
            "bars are on the first N = 1000 test images of each run") in built.text
    table = pd.read_csv(built.out / "tables" / "likelihoods.csv")
    assert set(table["variant"]) == set(SLACK)  # no "(bdmc_images=5)" / "(ais_steps=-)" labels
    for v in SLACK:
        got = table[(table["variant"] == v) & (table["metric"] == "test_nll_ais")].iloc[0]
        mean, lo, hi = t_interval(built.values[built.values["variant"] == v]["test_nll_ais"].to_numpy())
        assert got["n"] == 3 and got["mean"] == pytest.approx(mean) and got["ci_low"] == pytest.approx(lo)
        assert got["ci_high"] == pytest.approx(hi)
        # the analysis run's gaps are folded into the training run's row
        assert table[(table["variant"] == v) & (table["metric"] == "gap/amortization")].iloc[0]["n"] == 3
        assert table[(table["variant"] == v) & (table["metric"] == "nll_ladder/K1000")].iloc[0]["n"] == 3
    assert (built.out / "figures" / "likelihood_equation.png").stat().st_size > 1000


def test_ais_comparisons_are_seed_paired(built: Built) -> None:
    comp = pd.read_csv(built.out / "tables" / "likelihood_ais_comparisons.csv")
    assert len(comp) == 3 and (comp["n"] == 3).all()
    r = comp[(comp["variant_a"] == "iwae_dreg_k5") & (comp["variant_b"] == "iwae_k5")].iloc[0]
    v = built.values.set_index(["variant", "seed"])["test_nll_ais"]
    d = np.array([v["iwae_k5", s] - v["iwae_dreg_k5", s] for s in (1, 2, 3)])
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(t_interval(d)[1:])


def test_nll_differences_are_judged_against_the_slack(built: Built) -> None:
    slack = pd.read_csv(built.out / "tables" / "likelihood_slack.csv")
    assert len(slack) >= 3
    for r in slack.to_dict("records"):
        assert r["slack_a"] == pytest.approx(SLACK[r["variant_a"]], abs=0.05)
        exceeds = abs(r["mean_diff"]) > max(r["slack_a"], r["slack_b"])
        assert r["verdict"].startswith("exceeds") == exceeds
    assert "remaining slack" in built.text


def test_each_nll_claim_says_whether_it_survives_the_better_estimator(built: Built) -> None:
    slack = pd.read_csv(built.out / "tables" / "likelihood_slack.csv")
    v = built.values.set_index(["variant", "seed"])["test_nll_ais"]
    seen = 0
    for r in slack.to_dict("records"):
        if r["variant_a"] not in SLACK or r["variant_b"] not in SLACK:
            assert r["ais_verdict"] == "no paired AIS comparison" and r["ais_n"] == 0
            continue
        # the AIS difference oriented as the row's B - A, recomputed from MLflow
        d = np.array([v[r["variant_b"], s] - v[r["variant_a"], s] for s in (1, 2, 3)])
        mean, lo, hi = t_interval(d)
        assert r["ais_n"] == 3 and r["ais_mean_diff"] == pytest.approx(mean)
        assert (r["ais_ci_low"], r["ais_ci_high"]) == pytest.approx((lo, hi))
        if lo > 0 or hi < 0:
            want = "survives" if (mean > 0) == (r["mean_diff"] > 0) else "reversed"
        else:
            want = "does not survive"
        assert r["ais_verdict"].startswith(want), r
        seen += 1
    assert seen >= 1
    assert "the better estimator" in built.text


def test_the_slack_is_taken_on_the_same_images_where_the_ladder_has_the_runs_k() -> None:
    from bench.reporting.likelihoods import _slack, survives

    runs = pd.DataFrame({"test_nll": [100.0, 100.0, 100.0], AIS_COL: [99.0, 99.0, 99.0],
                         "nll_samples": ["1000", "1000", "100"], "nll_ladder/K1000": [99.4, np.nan, 99.2],
                         "nll_ladder/K100": [np.nan, np.nan, 99.7]})
    assert list(_slack(runs)) == pytest.approx([0.4, 1.0, 0.7])  # the ladder at K; no ladder: test_nll
    r = {"mean_diff": -0.3}
    assert survives(r, None) == "no paired AIS comparison"
    assert survives(r, {"mean_diff": -0.5, "ci_low": -0.8, "ci_high": -0.2}) == "survives the better estimator"
    assert survives(r, {"mean_diff": 0.5, "ci_low": 0.2, "ci_high": 0.8}) == "reversed by the better estimator"
    assert survives(r, {"mean_diff": -0.1, "ci_low": -0.4, "ci_high": 0.2}).startswith("does not survive")
    assert survives(r, {"mean_diff": -0.1, "ci_low": math.nan, "ci_high": math.nan}).startswith("AIS: no interval")


AIS_COL = "test_nll_ais"


def test_ais_comparisons_pair_no_decoders_of_different_kinds() -> None:
    # A Gaussian decoder's -log p(x) is a density, a Bernoulli's a probability: a difference of the two is scales.
    from bench.reporting.likelihoods import ais_comparisons

    runs = [{"label": label, "decoder": decoder, "latent": 20, "seed": seed, "run_id": f"{label}-{seed}",
             "test_nll_ais": base + 0.1 * seed}
            for label, decoder, base in [("sgvb_b", "bernoulli", 100.0), ("iwae_k5", "bernoulli", 99.0),
                                         ("sgvb_b_gauss", "gaussian", -700.0)] for seed in (1, 2, 3)]
    runs += [{"label": "sgvb_b_gauss_z10", "decoder": "gaussian", "latent": 20, "seed": seed,
              "run_id": f"g10-{seed}", "test_nll_ais": -650.0 + seed} for seed in (1, 2, 3)]
    comp = ais_comparisons(pd.DataFrame(runs))
    assert sorted(zip(comp["variant_a"], comp["variant_b"], strict=True)) == [
        ("iwae_k5", "sgvb_b"), ("sgvb_b_gauss", "sgvb_b_gauss_z10")]
    assert comp.set_index("variant_a").loc["iwae_k5", "mean_diff"] == pytest.approx(1.0)
