"""bench.report's paired comparisons, CSV tables, compute views, gradient-variance intervals and provenance, on a
synthetic store that follows the run and evaluation contracts (tests/reporting/synthetic.py). Every interval in
tables/comparisons.csv is recomputed here from the runs' MLflow metrics, with scipy, without the report's code."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scipy import stats as sps

from bench import report
from bench.cli import main_guard
from tests.conftest import REPO
from tests.reporting import synthetic
from tests.reporting.test_report import rows, section


@dataclass
class Built:
    uri: str
    out: Path
    text: str
    runs: pd.DataFrame  # one row per run: variant, latent, seed, and the final metrics, straight from MLflow


def mlflow_runs(uri: str) -> pd.DataFrame:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("vae-bench").experiment_id
    out = []
    for r in client.search_runs([exp], max_results=1000):
        out.append({"run_id": r.info.run_id, "variant": r.data.params["variant"],
                    "latent": int(r.data.params["latent"]), "seed": int(r.data.params["seed"]), **r.data.metrics})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("paired")
    uri = synthetic.build(root)
    out = root / "report"
    assert report.main(["--tracking-uri", uri, "--sweep", synthetic.SWEEP, "--out", str(out), "--date", "2024-01-01",
                        "--compare", "sgvb_b:iwae_k5", "--compare", "sgvb_a:sgvb_b_l5"]) == 0
    return Built(uri, out, (out / "report.md").read_text(), mlflow_runs(uri))


def recompute(runs: pd.DataFrame, a: str, b: str, latent: int, metric: str) -> tuple[int, float, float, float]:
    """n, mean difference and 95% t-interval of b - a over the seeds both variants have, from MLflow values."""
    ra = runs[(runs["variant"] == a) & (runs["latent"] == latent)].set_index("seed")[metric].dropna()
    rb = runs[(runs["variant"] == b) & (runs["latent"] == latent)].set_index("seed")[metric].dropna()
    seeds = sorted(set(ra.index) & set(rb.index))
    d = np.array([rb[s] - ra[s] for s in seeds])
    if len(d) < 2:
        return len(d), float(d.mean()) if len(d) else math.nan, math.nan, math.nan
    with np.errstate(all="ignore"):  # identical differences: scipy's interval is NaN, as the report's
        lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    return len(d), float(d.mean()), float(lo), float(hi)


def test_every_interval_of_the_csv_matches_an_independent_recomputation(built: Built) -> None:
    csv = pd.read_csv(built.out / "tables" / "comparisons.csv")
    assert {"comparison", "latent", "metric", "n", "mean_diff", "ci_low", "ci_high", "variant_a",
            "variant_b"} <= set(csv.columns)
    checked = 0
    for r in csv.itertuples():
        if r.comparison == "latent":
            continue  # one variant at two sizes: checked below
        n, mean, lo, hi = recompute(built.runs, r.variant_a, r.variant_b, int(r.latent), r.metric)
        assert r.n == n, r
        if n:
            assert r.mean_diff == pytest.approx(mean, abs=1e-9), r
        if n >= 2:
            assert (r.ci_low, r.ci_high) == (pytest.approx(lo, abs=1e-9, nan_ok=True),
                                             pytest.approx(hi, abs=1e-9, nan_ok=True)), r
            checked += 1
        else:
            assert math.isnan(r.ci_low) and math.isnan(r.ci_high), r
    assert checked >= 15
    lat = csv[(csv["comparison"] == "latent") & (csv["variant_a"] == "sgvb_b") & (csv["metric"] == "test_loss")]
    (r,) = lat.itertuples()
    runs = built.runs[built.runs["variant"] == "sgvb_b"]
    d = [runs[(runs.latent == 10) & (runs.seed == s)].test_loss.item() - runs[(runs.latent == 2) & (runs.seed == s)]
         .test_loss.item() for s in (1, 2, 3)]
    assert r.latent == "2→10" and r.ci_low == pytest.approx(sps.t.interval(0.95, 2, np.mean(d), sps.sem(d))[0])


def test_pairs_differ_only_in_the_axis_and_share_a_seed(built: Built) -> None:
    csv = pd.read_csv(built.out / "tables" / "comparisons.csv")
    ab = csv[(csv["comparison"] == "estimator_a_vs_b") & (csv["latent"] == "10")]
    (r,) = ab.itertuples()
    assert (r.variant_a, r.variant_b, r.seeds) == ("sgvb_a", "sgvb_b", "1 2 3")  # sgvb_a's seed 7 has no partner
    samples = csv[csv["comparison"] == "samples"]
    assert set(zip(samples["variant_a"], samples["variant_b"], strict=True)) == {("sgvb_b", "sgvb_b_l5")}
    fam = csv[(csv["comparison"] == "iwae_family") & (csv["metric"] == "test_nll")]
    assert list(zip(fam["variant_a"], fam["variant_b"], strict=True)) == [
        ("iwae_k5", "iwae_dreg_k5"), ("iwae_k5", "iwae_stl_k5"), ("iwae_dreg_k5", "iwae_stl_k5")]
    assert set(csv["comparison"]) == {"estimator_a_vs_b", "stl", "samples", "iwae_family", "decoder", "latent", "user"}
    # The decoders compare on test MSE only: their -ELBOs are on different scales.
    assert set(csv.loc[csv["comparison"] == "decoder", "metric"]) == {"test_mse"}


def test_a_single_pair_gets_no_interval_and_says_why(built: Built) -> None:
    stl = section(built.text, "Comparisons").split("### SGVB A vs A with sticking the landing")[1].split("###")[0]
    (row,) = rows(stl, "sgvb_a")
    assert row["n"] == "1" and row["verdict"] == "one seed-paired pair only (n = 1): no interval"
    assert "[" not in row["B − A [95% CI]"] and row["p (Holm)"] == "—"


def test_user_named_pairs(built: Built) -> None:
    user = section(built.text, "Comparisons").split("### Pairs named with --compare")[1]
    by_z = {(r["B"], r["z"], r["metric"]): r for r in rows(user, "sgvb_b") + rows(user, "sgvb_a")}
    assert by_z[("iwae_k5", "2", "test −ELBO")]["n"] == "3"
    assert ("iwae_k5", "10", "test −ELBO") not in by_z  # no IWAE at z 10: nothing to pair, no row
    assert by_z[("iwae_k5", "2", "test NLL")]["n"] == "0"  # sgvb_b has no test NLL here: nothing to pair
    assert by_z[("iwae_k5", "2", "test NLL")]["verdict"].startswith("no two runs share a seed and have this metric")
    assert by_z[("sgvb_b_l5", "10", "test −ELBO")]["n"] == "3"


@pytest.mark.parametrize("flag, needle", [("sgvb_b:nope", "no finished run of 'nope' here; variants there: "),
                                          ("sgvb_b", "--compare 'sgvb_b' is not A:B")])
def test_bad_compare_exits_2_with_one_line(built: Built, flag: str, needle: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main_guard(report.main, report.PROG)(["--tracking-uri", built.uri, "--sweep", synthetic.SWEEP, "--out",
                                                  str(tmp_path / "r"), "--compare", flag])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_many_intervals_are_read_with_holm(built: Built) -> None:
    csv = pd.read_csv(built.out / "tables" / "comparisons.csv")
    family = int(csv["p_value"].notna().sum())  # the rows Holm adjusts
    assert f"The tables below hold {family} intervals" in built.text and "Holm" in built.text
    p = csv["p_value"].dropna().sort_values()
    assert csv["p_holm"].dropna().min() == pytest.approx(min(1.0, p.iloc[0] * len(p)))


def test_every_table_is_a_csv_listed_in_the_report(built: Built) -> None:
    files = sorted(p.name for p in (built.out / "tables").glob("*.csv"))
    listed = sorted(Path(m).name for m in re.findall(r"^- `(tables/[^`]+\.csv)`", built.text, re.M))
    assert files == listed and len(files) >= 8
    summary = pd.read_csv(built.out / "tables" / "summary_bernoulli.csv")
    s = summary[(summary.variant == "sgvb_b") & (summary.latent == 2) & (summary.metric == "test_loss")].iloc[0]
    v = built.runs[(built.runs.variant == "sgvb_b") & (built.runs.latent == 2)].test_loss
    assert (s["n"], s["mean"], s["se"]) == (3, pytest.approx(v.mean()), pytest.approx(v.std() / math.sqrt(3)))
    (cell,) = [r for r in rows(section(built.text, "Summary"), "sgvb_b") if r["z"] == "2"]
    assert cell["n"] == "3" and cell["test −ELBO"] == f"{v.mean():.2f} ± {v.std() / math.sqrt(3):.2f}"


def test_trend_differences_are_paired_per_epoch(built: Built) -> None:
    df = pd.read_csv(built.out / "tables" / "trend_differences.csv")
    r = df[(df.variant_b == "sgvb_b_l5") & (df.latent == 10) & (df.epoch == 2)].iloc[0]
    client = MlflowClient(built.uri)
    ids = built.runs.set_index(["variant", "latent", "seed"])["run_id"]
    val = {(v, s): [m.value for m in client.get_metric_history(ids[(v, 10, s)], "test_loss") if m.step == 2][0]
           for v in ("sgvb_b", "sgvb_b_l5") for s in (1, 2, 3)}
    d = [val[("sgvb_b_l5", s)] - val[("sgvb_b", s)] for s in (1, 2, 3)]
    assert r.variant_a == "sgvb_b" and r.n == 3 and r.mean_diff == pytest.approx(np.mean(d))
    assert r.ci_high == pytest.approx(sps.t.interval(0.95, 2, np.mean(d), sps.sem(d))[1])
    assert "figures/trend_differences.png" in built.text


def test_compute_matched_table(built: Built) -> None:
    df = pd.read_csv(built.out / "tables" / "compute.csv")
    l5 = df[(df.variant == "sgvb_b_l5") & (df.latent == 10)].iloc[0]
    assert l5.decoder_evaluations == 5 * 2000 * synthetic.EPOCHS  # samples x limit_train x epochs
    assert "figures/compute_matched.png" in built.text
    assert "interval excludes" not in section(built.text, "Compute-matched views")  # seconds get no verdicts


def test_gradient_variance_ratios_have_bootstrap_intervals(built: Built) -> None:
    df = pd.read_csv(built.out / "tables" / "gradient_variance_ratios.csv")
    r = df[(df.variant == "sgvb_b") & (df.latent == 2) & (df.label == "iwae_L4")].iloc[0]
    assert (r.reference, r.runs, r.batches, r.samples) == ("sgvb_b", 3, synthetic.BATCHES, 4)
    assert r.ci_low < r.ratio < r.ci_high
    # The point estimate from the runs' artifacts: pooled over runs and minibatches.
    client = MlflowClient(built.uri)
    frames = []
    for rid in built.runs[(built.runs.variant == "sgvb_b") & (built.runs.latent == 2)].run_id:
        frames.append(pd.read_csv(client.download_artifacts(rid, "evaluation/gradvar.csv")))
    g = pd.concat(frames)
    enc = g[g.part == "encoder"]
    total = enc.groupby("label")["variance"].sum()
    assert r.ratio == pytest.approx(total["iwae_L4"] / total["sgvb_b"])
    grad = section(built.text, "Gradient variance")
    assert re.search(r"\| 0\.\d\d \[0\.\d+, 0\.\d+\]", grad)  # 2 significant figures with the interval


def test_header_names_the_runs_commits_and_seeds(built: Built) -> None:
    code = re.search(r"^- \*\*Code:\*\* (.*)$", built.text, re.M)[1]
    assert code.startswith("runs trained with vae-bench commit `0123456789ab` (29 runs); 6 runs carry no commit tag")
    counts = re.search(r"^- \*\*Counts:\*\* (.*)$", built.text, re.M)[1]
    assert "seeds {1, 2, 3, 7} (4 seeds); 3 epochs each" in counts


def test_unknown_baseline_is_said_plainly(built: Built, tmp_path: Path) -> None:
    assert report.main(["--tracking-uri", built.uri, "--sweep", synthetic.SWEEP, "--out", str(tmp_path),
                        "--baseline", "nope"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "No finished run of the baseline `nope` here" in text


def test_no_download_bars_on_the_console(built: Built, tmp_path: Path) -> None:
    """The report downloads each measured run's gradvar.csv: MLflow would draw a progress bar per download."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    proc = subprocess.run([sys.executable, "-m", "bench.report", "--tracking-uri", built.uri, "--sweep",
                           synthetic.SWEEP, "--out", str(tmp_path), "--compare", "sgvb_b:iwae_k5"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "Downloading artifacts" not in proc.stderr + proc.stdout
    assert (tmp_path / "tables" / "gradient_variance_ratios.csv").is_file()
