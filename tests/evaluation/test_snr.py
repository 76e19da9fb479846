"""The SNR study (bench.evaluation.snr, python -m bench.snr) and the SNR during training (bench.run --snr-every):
slopes recover a known law, the K-sample ELBO's SNR rises as sqrt(K) within the study's own interval, and the
commands log what they say into real runs of real SQLite stores."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from bench.cli import main_guard
from bench.evaluation import snr
from bench.reporting.data import load
from bench.run import main as run_main
from bench.snr import PROG
from bench.snr import main as snr_main
from bench.tracking.analyses import find_analysis_run
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import ANALYSIS_TAG, PARENT_TAG, TRAINING_SNR_ANALYSIS
from bench.training.resume import log_missing
from tests.conftest import train_one
from variants.model import VAE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_slopes_recover_a_known_power_law_and_its_interval_covers_it() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for k in (1, 3, 10, 30, 100):
        for rep in (-1, *range(snr.GROUPS)):
            noise = np.exp(rng.normal(0, 0.02))
            rows.append({"estimator": "iwae", "K": k, "part": "encoder", "replicate": rep,
                         "snr_param": 2.0 * k ** -0.5 * noise, "snr": 4.0 * k ** -1.0 * noise, "variance": 1.0})
    fits = snr.slopes(pd.DataFrame(rows), tail_k=10)
    per_param = fits[(fits["form"] == "snr_param") & (fits["range"] == "all")].iloc[0]
    assert per_param["slope"] == pytest.approx(-0.5, abs=0.02)
    assert per_param["ci_low"] < per_param["slope"] < per_param["ci_high"] and per_param["stderr"] > 0
    tail = fits[(fits["form"] == "snr") & (fits["range"] == "tail")].iloc[0]
    assert (tail["k_min"], tail["k_max"]) == (10, 100) and tail["slope"] == pytest.approx(-1.0, abs=0.05)


def test_the_elbos_snr_rises_as_sqrt_k_within_the_studys_interval(mnist) -> None:
    """The L-sample ELBO's gradient is the mean of L independent one-sample gradients: its mean is fixed and its
    standard deviation falls as 1/sqrt(L), so the per-parameter SNR's slope is +1/2 exactly in expectation."""
    torch.manual_seed(0)
    model = VAE(latent=2, hidden=16)
    x = torch.bernoulli(mnist.test_x[:4], generator=torch.Generator().manual_seed(0))
    table = snr.measure(model, x, ks=(1, 4, 16, 64), repeats=200, estimators={"elbo": "sgvb_a", "iwae": "iwae"})
    fits = snr.slopes(table)
    elbo = fits[(fits["estimator"] == "elbo") & (fits["form"] == "snr_param") & (fits["range"] == "all")]
    for _, r in elbo.iterrows():
        assert r["ci_low"] < 0.5 < r["ci_high"], r
        assert r["ci_high"] - r["ci_low"] < 0.3  # an interval narrow enough to mean something
    iwae = table[(table["estimator"] == "iwae") & (table["K"] == 1) & (table["replicate"] == -1)]
    elbo1 = table[(table["estimator"] == "elbo") & (table["K"] == 1) & (table["replicate"] == -1)]
    assert np.allclose(iwae["snr_param"], elbo1["snr_param"])  # K = 1: the same estimator on the same noise
    metrics = snr.metrics(table, fits)
    dec16 = table[(table["estimator"] == "elbo") & (table["K"] == 16) & (table["part"] == "decoder")]
    assert metrics["snr/decoder/elbo/K16"] == float(dec16[dec16["replicate"] == -1]["snr_param"].iloc[0])
    assert {"snr/slope/encoder/iwae", "snr/slope_low/decoder/elbo", "snr/norm/encoder/iwae/K4"} <= set(metrics)
    assert "| elbo | generative (decoder) | per-parameter | 1-64 |" in snr.markdown(fits, "here", "settings")


@pytest.fixture(scope="module")
def run_with_snr(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """bench.run with --snr-every 1: two epochs of a small model, in a real store."""
    return train_one(tmp_path_factory.mktemp("snr"), "--variant", "iwae_dreg_k5", "--latent", "2", "--hidden", "20",
                     "--epochs", "2", "--limit-train", "256", "--snr-every", "1")


SNR_KEYS = ("snr/train/encoder", "snr/train/decoder", "snr/train/norm/encoder", "snr/train/seconds")


def _training_snr_runs(client: MlflowClient, run_id: str) -> list[Any]:
    exp = client.get_run(run_id).info.experiment_id
    return client.search_runs([exp], f"tags.`{ANALYSIS_TAG}` = '{TRAINING_SNR_ANALYSIS}'")


def test_snr_every_logs_the_snr_at_those_epochs_into_a_nested_run(run_with_snr: tuple[str, str]) -> None:
    uri, run_id = run_with_snr
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["snr_every"] == "1"
    # The training run's Model metrics tab opens on its curves: no slash section on it.
    assert not [k for k in run.data.metrics if k.startswith("snr/")] and "train_loss" in run.data.metrics
    (child,) = _training_snr_runs(client, run_id)
    assert child.info.run_id == find_analysis_run(client, run_id, TRAINING_SNR_ANALYSIS)
    assert child.data.tags[PARENT_TAG] == run_id and child.info.status == "FINISHED"
    assert child.info.run_name == f"{run.info.run_name} · {TRAINING_SNR_ANALYSIS}"
    assert child.data.params["snr_every"] == "1" and child.data.params["latent"] == "2"
    for name in SNR_KEYS:
        history = client.get_metric_history(child.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name
        assert all(math.isfinite(m.value) and m.value > 0 for m in history)


def test_a_resumed_run_keeps_one_snr_run_with_every_epoch(tmp_path: Path) -> None:
    uri, run_id = train_one(tmp_path, "--variant", "sgvb_b", "--latent", "2", "--hidden", "20", "--epochs", "1",
                            "--limit-train", "256", "--snr-every", "1")
    client = MlflowClient(uri)
    (first,) = _training_snr_runs(client, run_id)
    # --snr-every is not given again: the resume keeps the run's own
    assert run_main(["--resume", run_id, "--epochs", "2", "--device", "cpu", "--tracking-uri", uri,
                     "--no-progress"]) == 0
    (again,) = _training_snr_runs(client, run_id)
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    for name in SNR_KEYS:
        assert sorted(m.step for m in client.get_metric_history(again.info.run_id, name)) == [1, 2], name
    assert not [k for k in client.get_run(run_id).data.metrics if k.startswith("snr/")]


def test_a_checkpointed_epoch_whose_snr_was_not_logged_is_logged_on_resume(tmp_path: Path) -> None:
    """A process killed after the run's metrics of an epoch and before its SNR's: the resume logs the SNR from the
    checkpoint into the one nested run, and the run's own metrics are not logged twice."""
    uri, run_id = train_one(tmp_path, "--variant", "sgvb_b", "--latent", "2", "--hidden", "20", "--epochs", "1",
                            "--limit-train", "256", "--snr-every", "1")
    client = MlflowClient(uri)
    (child,) = _training_snr_runs(client, run_id)
    client.delete_run(child.info.run_id)  # as if it had never been logged (deleted runs are not searched)
    tracker = MlflowTracker(client, run_id)
    start = tracker.load_checkpoint()
    assert start is not None and "snr/train/encoder" in start["metrics"]
    log_missing(client, tracker, start["metrics"], 1, client.get_metric_history(run_id, "train_loss"))
    tracker.finish()
    (child,) = _training_snr_runs(client, run_id)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "snr/train/encoder")] == [1]
    assert child.data.metrics["snr/train/encoder"] == start["metrics"]["snr/train/encoder"]
    assert len(client.get_metric_history(run_id, "train_loss")) == 1


def test_the_report_reads_the_training_snr_from_the_nested_run_and_from_old_stores(
        run_with_snr: tuple[str, str], tmp_path: Path) -> None:
    uri, run_id = run_with_snr
    client = MlflowClient(uri)
    child = find_analysis_run(client, run_id, TRAINING_SNR_ANALYSIS)
    data = load(client)
    (row,) = data.runs[data.runs["run_id"] == run_id].to_dict("records")
    assert row["snr/train/encoder"] == client.get_run(child).data.metrics["snr/train/encoder"]
    assert run_id in set(data.main["run_id"]) and child not in set(data.runs["run_id"])
    # A store made before: the SNR on the training run itself
    old = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    t = MlflowTracker.start(old, "vae-bench", "sgvb_b-z2-L1-s1", {"variant": "sgvb_b", "latent": 2, "seed": 1})
    t.log_metrics({"train_loss": 150.0, "test_loss": 140.0, "snr/train/encoder": 0.25}, step=1)
    t.log_metrics({"train_loss": 149.0, "test_loss": 139.0, "snr/train/encoder": 0.5}, step=2)
    t.finish()
    data = load(old)
    assert data.runs.loc[data.runs["run_id"] == t.run_id, "snr/train/encoder"].tolist() == [0.5]


def test_bench_snr_logs_the_study_into_the_run(run_with_snr: tuple[str, str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    uri, run_id = run_with_snr
    client = MlflowClient(uri)
    status = client.get_run(run_id).info.status
    argv = ["--run-id", run_id, "--tracking-uri", uri, "--images", "2", "--repeats", "10", "--k-grid", "1,4,16",
            "--device", "cpu", "--out", str(tmp_path / "out")]
    assert snr_main(argv) == 0
    assert client.get_run(run_id).info.status == status
    assert not any(k.startswith("snr/") for k in client.get_run(run_id).data.metrics)
    run_id = find_analysis_run(client, run_id, "SNR study")  # the study sits in the analysis run nested under it
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["bench.analysis"] == "SNR study"
    assert (run.data.params["snr_images"], run.data.params["snr_repeats"], run.data.params["snr_k_grid"]) == (
        "2", "10", "1,4,16")
    m = run.data.metrics
    for est in ("iwae", "iwae_dreg", "iwae_stl", "elbo"):
        for part in ("encoder", "decoder"):
            assert all(f"snr/{part}/{est}/K{k}" in m for k in (1, 4, 16))
            assert m[f"snr/slope_low/{part}/{est}"] <= m[f"snr/slope/{part}/{est}"] <= m[f"snr/slope_high/{part}/{est}"]
    assert client.get_metric_history(run_id, "snr/slope/encoder/iwae")[0].step == 2  # at the run's last epoch
    assert {f.path for f in client.list_artifacts(run_id, "snr")} == {
        "snr/snr.csv", "snr/slopes.csv", "snr/snr.md", "snr/snr_vs_k.png"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"snr.csv", "slopes.csv", "snr.md", "snr_vs_k.png"}
    assert "papers' prediction" in capsys.readouterr().out
    # Other settings cannot sit under the same params: one line, exit 2, nothing computed.
    guarded = main_guard(snr_main, PROG)
    assert guarded([*argv[:6], "--repeats", "20", "--k-grid", "1,4,16"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert guarded(["--run-id", "nope", "--tracking-uri", uri]) == 2
    assert guarded(["--run-id", run_id, "--tracking-uri", uri, "--k-grid", "5"]) == 2


def test_the_norm_forms_prediction_is_twice_the_per_parameter_one() -> None:
    assert snr.prediction("iwae", "encoder", "snr_param").startswith("-1/2 ")
    assert snr.prediction("iwae", "encoder", "snr").startswith("-1 ")
    assert snr.prediction("elbo", "decoder", "snr").startswith("+1 ")
    assert snr.prediction("iwae_dreg", "encoder", "snr").startswith("rises")
    assert snr.prediction("plugin_estimator", "encoder", "snr") == ""


def _simulated_study(rng: np.random.Generator, ks: tuple[int, ...], params: int, repeats: int,
                     scale: float) -> pd.DataFrame:
    """A study's table from simulated gradients: every parameter has sd 1 and mean scale * K^-1/2 (true SNR slope
    -1/2), R draws per K in snr.GROUPS groups. Each group is drawn from its sufficient statistics (its mean ~
    N(mu, 1/n), its within-group sum of squares ~ chi2(n - 1)), which is exact for Gaussian draws."""
    from bench.evaluation.draws import debiased_snr

    n = repeats // snr.GROUPS
    rows = []
    for k in ks:
        mu = scale * k ** -0.5
        means = rng.normal(mu, 1 / math.sqrt(n), size=(snr.GROUPS, params))
        within = rng.chisquare(n - 1, size=(snr.GROUPS, params))
        for rep in (-1, *range(snr.GROUPS)):
            keep = np.arange(snr.GROUPS) != rep
            m = means[keep].mean(0)
            var = (within[keep].sum(0) + n * ((means[keep] - m) ** 2).sum(0)) / (n * keep.sum() - 1)
            r = float(n * keep.sum())
            rows.append({"estimator": "iwae", "K": k, "part": "encoder", "replicate": rep,
                         "snr_param": float((np.abs(m) / np.sqrt(var)).mean()),
                         "snr_param_debiased": debiased_snr(torch.from_numpy(m), torch.from_numpy(var), r),
                         "snr": 1.0, "variance": 1.0})
    return pd.DataFrame(rows)


def test_the_debiased_snr_slope_covers_a_known_slope_below_the_noise_floor() -> None:
    """True SNR 1.5 K^-1/2 over K = 1..1000 at R = 100: from K = 300 on it is below the floor sqrt(2/(pi R)) =
    0.08 of mean |g_bar| / s. Over repeated simulated studies the debiased form's 95% jackknife interval covers
    -1/2 close to 95% of the time; Rainforth's plain form, flattened by the floor, almost never does."""
    rng = np.random.default_rng(18)
    ks, studies = (1, 3, 10, 30, 100, 300, 1000), 60
    covered = {"snr_param": 0, "snr_param_debiased": 0}
    slopes = []
    for _ in range(studies):
        fits = snr.slopes(_simulated_study(rng, ks, params=400, repeats=snr.REPEATS, scale=1.5), tail_k=10**6)
        for form in covered:
            f = fits[(fits["form"] == form) & (fits["range"] == "all")].iloc[0]
            covered[form] += bool(f["ci_low"] <= -0.5 <= f["ci_high"])
            if form == "snr_param_debiased":
                slopes.append(f["slope"])
    assert abs(np.mean(slopes) + 0.5) < 0.03, np.mean(slopes)
    assert covered["snr_param_debiased"] / studies >= 0.85, covered  # 95% nominal; +-0.06 is 2 se at n = 60
    assert covered["snr_param"] / studies <= 0.2, covered
