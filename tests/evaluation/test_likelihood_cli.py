"""bench.evaluate --ais / --bdmc / --gaps / --nll-ladder on a real run in a real SQLite store: what is logged where,
the bad settings (one line, exit 2), and Ctrl-C (the run as it was, the analysis run KILLED)."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from bench.evaluate import main as evaluate_main
from bench.evaluation.likelihood_study import ANALYSIS
from bench.tracking.analyses import find_analysis_run
from bench.tracking.names import OWNER_TAG
from tests.commands.test_lifecycle import assert_clean, popen, signal_on
from tests.conftest import run_cli, train_one

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return train_one(tmp_path_factory.mktemp("likelihood"), "--variant", "sgvb_b", "--latent", "2", "--epochs", "1",
                     "--limit-train", "500")


TINY = ["--ais-steps", "30", "--ais-chains", "3", "--ais-images", "12", "--device", "cpu", "--no-progress",
        "--nll-samples", "0"]


def test_ais_bdmc_gaps_and_ladder_are_logged_where_the_contract_says(trained: tuple[str, str],
                                                                      tmp_path: Path) -> None:
    uri, run_id = trained
    client = MlflowClient(uri)
    status = client.get_run(run_id).info.status
    argv = ["--run-id", run_id, "--tracking-uri", uri, *TINY, "--bdmc", "4", "--gaps", "--gap-steps", "20",
            "--nll-ladder"]
    assert evaluate_main(argv) == 0
    run = client.get_run(run_id)
    assert run.info.status == status
    m = run.data.metrics
    assert math.isfinite(m["test_nll_ais"]) and m["test_nll_ais_stderr"] > 0 and m["test_nll_ais_mc_stderr"] >= 0
    assert math.isfinite(m["bdmc_gap"])
    step = client.get_metric_history(run_id, "test_nll_ais")[0].step
    assert step == 1  # at the model's epoch
    assert not any(k.startswith(("ais_", "bdmc_images")) for k in m)  # settings are params and tags
    p = run.data.params
    assert (p["ais_steps"], p["ais_chains"], p["ais_images"], p["bdmc_images"]) == ("30", "3", "12", "4")
    assert run.data.tags["bench.ais_steps.step1"] == "30"
    assert not any(k.startswith(("gap/", "nll_ladder/", "elbo/")) for k in m)  # those live in the analysis run
    child_id = find_analysis_run(client, run_id, ANALYSIS)
    child = client.get_run(child_id)
    assert child.info.status == "FINISHED"
    cm = child.data.metrics
    for name in ("gap/amortization", "gap/approximation", "elbo/encoder", "elbo/optimised"):
        assert math.isfinite(cm[name]) and cm[f"{name}_stderr"] >= 0
    ladder = [cm[f"nll_ladder/K{k}"] for k in (1, 10, 100, 1000)]
    assert ladder == sorted(ladder, reverse=True)  # L_K rises with K on the same images: -L_K falls
    # the seed's identity on the page: -ELBO[q_enc] = NLL_AIS + both gaps (same images, per-image sums)
    assert -cm["elbo/encoder"] == pytest.approx(m["test_nll_ais"] + cm["gap/amortization"] + cm["gap/approximation"],
                                                abs=1e-6)
    table = pd.read_csv(client.download_artifacts(child_id, "likelihood/per_image.csv", str(tmp_path)))
    assert len(table) == 12 and {"log_px_ais", "elbo_encoder", "elbo_optimised", "L_K1000"} <= set(table.columns)
    assert -table["log_px_ais"].mean() == pytest.approx(m["test_nll_ais"], rel=1e-9)
    bd = pd.read_csv(client.download_artifacts(child_id, "likelihood/bdmc.csv", str(tmp_path)))
    assert (bd["upper"] - bd["lower"]).mean() == pytest.approx(m["bdmc_gap"], rel=1e-9)
    assert not any(k.startswith(OWNER_TAG.format("")) for k in client.get_run(run_id).data.tags)  # lease released


@pytest.mark.parametrize("flag, value, says", [("--ais-steps", "0", "not positive"),
                                               ("--ais-chains", "0", "not positive"),
                                               ("--ais-images", "10001", "out of range"),
                                               ("--ais-images", "0", "out of range")])
def test_bad_settings_one_line_exit_2(trained: tuple[str, str], capsys: pytest.CaptureFixture[str], flag: str,
                                      value: str, says: str) -> None:
    uri, run_id = trained
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--run-id", run_id, "--tracking-uri", uri, "--ais", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and flag in err[0], err


def test_bad_settings_from_the_shell(trained: tuple[str, str]) -> None:
    uri, run_id = trained
    proc = run_cli("bench.evaluate", "--run-id", run_id, "--tracking-uri", uri, "--ais", "--ais-images", "20000")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ctrl_c_during_the_gaps_leaves_the_run_as_it_was(trained: tuple[str, str], tmp_path: Path) -> None:
    uri, run_id = trained
    client = MlflowClient(uri)
    status = client.get_run(run_id).info.status
    before = len(client.get_metric_history(run_id, "test_nll_ais"))
    proc = popen("bench.evaluate", ["--run-id", run_id, "--tracking-uri", uri, *TINY, "--gaps", "--gap-steps",
                                    "100000000"], tmp_path)
    p = signal_on(proc, "test NLL by AIS", [signal.SIGINT], delay=1.0)
    assert p.returncode == 130
    assert_clean(p)
    assert client.get_run(run_id).info.status == status
    assert len(client.get_metric_history(run_id, "test_nll_ais")) == before + 1  # AIS was done and kept
    assert client.get_run(find_analysis_run(client, run_id, ANALYSIS)).info.status == "KILLED"
    assert not any(k.startswith(OWNER_TAG.format("")) for k in client.get_run(run_id).data.tags)
    # and it can be evaluated again straight away (the lease was released)
    assert evaluate_main(["--run-id", run_id, "--tracking-uri", uri, *TINY]) == 0
