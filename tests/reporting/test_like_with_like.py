"""Issue 18: every comparison pairs like with like. One test per defect the review found, each on a run table
built here (the shape ``mlflow.search_runs`` returns) or a tiny real SQLite store, so the numbers are known."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bench.reporting.data import config_params, load, tidy
from bench.reporting.pairing import AXES, axis_rows, finish, pair, user_rows

BASE = {"hidden": "400", "latent": "2", "epochs": "10", "batch_size": "128", "lr": "0.001", "device": "cpu",
        "precision": "fp32", "binarize": "none", "limit_train": "2000", "data": "mnist", "data_digest": "x",
        "decoder": "bernoulli"}
IWAE = {"iwae_k5": ("iwae", "5"), "iwae_dreg_k5": ("iwae_dreg", "5")}


def raw_runs(specs: list[dict[str, object]]) -> pd.DataFrame:
    """A search_runs-shaped frame: each spec has variant, seed, test_loss and any param overrides."""
    rows = []
    for i, s in enumerate(specs):
        s = dict(s)
        est, k = IWAE[str(s["variant"])]
        loss = s.pop("test_loss")
        params = BASE | {"estimator": est, "samples": k} | {key: str(v) for key, v in s.items()}
        rows.append({"run_id": f"r{i:03d}", "status": "FINISHED", "experiment": "vae-bench",
                     "tags.mlflow.runName": f"{params['variant']}-s{params['seed']}-{i}",
                     **{f"params.{key}": v for key, v in params.items()}, "metrics.test_loss": float(loss)})
    return pd.DataFrame(rows)


def user(raw: pd.DataFrame, a: str = "iwae_k5", b: str = "iwae_dreg_k5") -> pd.DataFrame:
    runs, params, _ = tidy(raw)
    df = finish(user_rows(runs[runs["status"] == "FINISHED"], params, [(a, b)]))
    return df[df["metric"] == "test_loss"]


def test_compare_pairs_each_configuration_with_its_twin_and_never_pools() -> None:
    """The issue's example: iwae_k5 at 5 and 10 epochs, iwae_dreg_k5 at 10; true difference +0.5 at 10 epochs.
    The 5-epoch runs (lower run ids, much higher loss) used to win the per-seed pick: n = 3, sign flipped."""
    specs = [{"variant": "iwae_k5", "seed": s, "epochs": 5, "test_loss": 110.0 + s} for s in (1, 2, 3)]
    specs += [{"variant": "iwae_k5", "seed": s, "epochs": 10, "test_loss": 100.0 + s} for s in (1, 2)]
    specs += [{"variant": "iwae_dreg_k5", "seed": s, "epochs": 10, "test_loss": 100.5 + s} for s in (1, 2, 3)]
    df = user(raw_runs(specs))
    (r,) = df[df["n"] > 0].itertuples()
    assert (r.n, r.mean_diff) == (2, pytest.approx(0.5))
    assert "epochs=10" in r.variant_a  # it says which configuration of iwae_k5 it took
    assert r.runs_a == "r003;r004" and r.runs_b == "r005;r006"


def test_evaluation_settings_do_not_split_a_configuration() -> None:
    snr = {"snr_images": 8, "snr_repeats": 100, "snr_k_grid": "1,10", "snr_seed": 2018, "snr_every": 0}
    specs = [{"variant": "iwae_k5", "seed": s, "test_loss": 100.0 + s} for s in (1, 2, 3)]
    specs += [{"variant": "iwae_dreg_k5", "seed": s, "test_loss": 100.5 + s} for s in (1, 2, 3)]
    specs[0] |= snr  # one run had an SNR study
    runs, params, _ = tidy(raw_runs(specs))
    assert set(runs["label"]) == {"iwae_k5", "iwae_dreg_k5"}
    assert not set(snr) & set(config_params(params))
    fam = next(a for a in AXES if a.key == "iwae_family")
    (r,) = [r for r in axis_rows(runs, params, fam) if r["metric"] == "test_loss"]
    assert r["n"] == 3
    assert user(raw_runs(specs))["n"].tolist() == [3]


def test_an_unknown_param_counts_as_configuration() -> None:
    """A setting the report does not know may change training: it splits configurations rather than pool them."""
    specs = [{"variant": "iwae_k5", "seed": s, "test_loss": 100.0 + s, "warmup": "0"} for s in (1, 2)]
    specs += [{"variant": "iwae_dreg_k5", "seed": s, "test_loss": 100.5 + s + float(w), "warmup": w}
              for s in (1, 2) for w in ("0", "5")]
    runs, params, _ = tidy(raw_runs(specs))
    assert "warmup" in config_params(params)
    fam = next(a for a in AXES if a.key == "iwae_family")
    rows = [r for r in axis_rows(runs, params, fam) if r["metric"] == "test_loss"]
    assert [(r["n"], r["mean_diff"]) for r in rows] == [(2, pytest.approx(0.5))]  # warmup 0 with warmup 0 only


def test_duplicate_seeds_are_dropped_after_the_equal_k_filter() -> None:
    """Seed 1 of A was evaluated twice (K = 100 in the lower run id, K = 1000); B has K = 1000: a valid pair."""
    a = pd.DataFrame({"seed": [1, 1], "run_id": ["a1", "a2"], "test_nll": [90.0, 89.0],
                      "nll_samples": ["100", "1000"]})
    b = pd.DataFrame({"seed": [1], "run_id": ["b1"], "test_nll": [88.5], "nll_samples": ["1000"]})
    p = pair(a, b, "test_nll")
    assert len(p) == 1 and p["a"].item() == 89.0 and p["b"].item() == 88.5


def test_holms_family_size_leaves_out_rows_without_a_p_value() -> None:
    from bench.reporting.comparisons import family_size

    rows = [{"comparison": "x", "variant_a": "a", "variant_b": "b", "latent": 2, "metric": "test_loss", "n": 3,
             "mean_a": 1.0, "mean_b": 2.0, "mean_diff": 1.0, "sd_diff": sd, "ci_low": 0.5, "ci_high": 1.5,
             "p_value": p, "seeds": "1 2 3"} for sd, p in ((0.1, 0.01), (0.0, float("nan")))]
    assert family_size(finish(rows)) == 1


def test_a_metric_from_an_earlier_epoch_is_not_used(tracking_uri: str) -> None:
    """A run resumed from 10 to 20 epochs whose test NLL was measured at epoch 10 only: its NLL does not pair
    with the other variant's epoch-20 NLL, and the report data lists it as not re-evaluated."""
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("vae-bench")
    ids = {}
    for variant, (est, k) in IWAE.items():
        for seed in (1, 2):
            run = client.create_run(exp, run_name=f"{variant}-s{seed}", tags={"bench.sweep": "s"})
            params = BASE | {"variant": variant, "estimator": est, "samples": k, "seed": str(seed), "epochs": "20"}
            nll_step = 10 if (variant, seed) == ("iwae_k5", 1) else 20
            metrics = [Metric("test_loss", 100.0 + seed, 0, e) for e in (10, 20)]
            metrics.append(Metric("test_nll", 95.0 + seed, 0, nll_step))
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param(p, v) for p, v in params.items()],
                             tags=[RunTag(f"bench.nll_samples.step{nll_step}", "100")])
            client.set_terminated(run.info.run_id, "FINISHED")
            ids[(variant, seed)] = run.info.run_id
    data = load(client, sweep="s")
    fin = data.finished.set_index("run_id")
    assert pd.isna(fin.loc[ids[("iwae_k5", 1)], "test_nll"])
    assert fin.loc[ids[("iwae_k5", 2)], "test_nll"] == 97.0
    assert data.stale.to_dict("records") == [{"run_id": ids[("iwae_k5", 1)], "metric": "test_nll", "step": 10,
                                              "epochs": 20}]
    from bench import report

    out = Path(tracking_uri.removeprefix("sqlite:///")).parent / "report"
    assert report.main(["--tracking-uri", tracking_uri, "--sweep", "s", "--out", str(out), "--date", "2024-01-01",
                        "--compare", "iwae_k5:iwae_dreg_k5"]) == 0
    text = (out / "report.md").read_text()
    assert "## Metrics not re-evaluated at the final epoch" in text
    (row,) = pd.read_csv(out / "tables" / "stale_metrics.csv").to_dict("records")
    assert (row["metric"], row["not re-evaluated at epoch"], row["latest value from epoch"]) == ("test_nll", 20, 10)
    csv = pd.read_csv(out / "tables" / "comparisons.csv")
    nll = csv[(csv["comparison"] == "user") & (csv["metric"] == "test_nll")].iloc[0]
    assert (nll["n"], nll["seeds"]) == (1, "2")  # seed 1's NLL is stale: only seed 2 pairs
    assert nll["runs_a"] == ids[("iwae_k5", 2)] and nll["runs_b"] == ids[("iwae_dreg_k5", 2)]
