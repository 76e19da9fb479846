"""scripts/check_likelihoods.py on real SQLite stores: a tiny trained model evaluated by bench.evaluate --ais --gaps
--nll-ladder passes, with the slack paired image by image from likelihood/per_image.csv; runs whose logged metrics
break a rule (AIS above L_1000, a negative gap, a missing number) are flagged and the exit status is 1."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from bench.evaluate import main as evaluate_main
from bench.evaluation.likelihood_study import ANALYSIS
from bench.tracking.analyses import analysis_run, find_analysis_run
from tests.conftest import CODE, REPO, train_one

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = REPO / "scripts" / "check_likelihoods.py"
_spec = importlib.util.spec_from_file_location("check_likelihoods", SCRIPT)
check = importlib.util.module_from_spec(_spec)
sys.modules["check_likelihoods"] = check  # dataclasses look their module up
_spec.loader.exec_module(check)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A real run (latent 2, one epoch on 500 images) with AIS, the gaps and the NLL ladder on 16 test images."""
    uri, run_id = train_one(tmp_path_factory.mktemp("check-likelihoods"), "--variant", "sgvb_b", "--latent", "2",
                            "--epochs", "1", "--limit-train", "500")
    assert evaluate_main(["--run-id", run_id, "--tracking-uri", uri, "--ais-steps", "200", "--ais-chains", "4",
                          "--ais-images", "16", "--gaps", "--gap-steps", "100", "--nll-ladder", "--nll-samples",
                          "0", "--device", "cpu", "--no-progress"]) == 0
    return uri, run_id


def test_a_real_evaluated_run_passes_with_the_slack_paired_per_image(evaluated: tuple[str, str], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    uri, run_id = evaluated
    out_csv = tmp_path / "check.csv"
    assert check.main([uri, "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 runs pass (z = 2" in out and "FAIL" not in out
    client = MlflowClient(uri)
    m = client.get_run(run_id).data.metrics
    child = find_analysis_run(client, run_id, ANALYSIS)
    cm = client.get_run(child).data.metrics
    row = pd.read_csv(out_csv).iloc[0]
    assert row["run_id"] == run_id and row["verdict"] == "ok" and bool(row["slack_paired"])
    assert (str(row["variant"]), str(row["latent"]), str(row["seed"])) == ("sgvb_b", "2", "1")
    assert row["ais_settings"] == "T=200 C=4 prior N=16"
    assert row["test_nll_ais"] == pytest.approx(m["test_nll_ais"]) and row["nll_k1000"] == pytest.approx(
        cm["nll_ladder/K1000"])
    assert row["amortization_gap"] == pytest.approx(cm["gap/amortization"])
    assert row["approximation_gap_stderr"] == pytest.approx(cm["gap/approximation_stderr"])
    # the slack and its error recomputed here from the per-image table: paired, not the images' spread twice over
    t = pd.read_csv(client.download_artifacts(child, "likelihood/per_image.csv", str(tmp_path)))
    d = t["log_px_ais"] - t["L_K1000"]
    assert row["slack"] == pytest.approx(d.mean(), abs=1e-9)
    assert row["slack"] == pytest.approx(m["test_nll_ais"] * -1 + cm["nll_ladder/K1000"], abs=1e-6)
    assert row["slack_stderr"] == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)), rel=1e-9)
    assert row["slack_stderr"] < math.hypot(m["test_nll_ais_stderr"], cm["nll_ladder/K1000_stderr"]) / 3
    assert f"{m['test_nll_ais']:.2f} ± {m['test_nll_ais_stderr']:.2f}" in out


def _run(client: MlflowClient, exp: str, name: str, seed: int, main: dict[str, float],
         child: dict[str, float] | None, per_image: pd.DataFrame | None = None, folder: Path | None = None) -> str:
    """A training run logged as bench.run and bench.evaluate would (params, metrics at step 5, an analysis run)."""
    run = client.create_run(exp, run_name=name)
    rid = run.info.run_id
    params = {"variant": name.split("-")[0], "latent": "20", "seed": str(seed), "epochs": "5", "ais_steps": "300",
              "ais_chains": "4", "ais_start": "encoder", "ais_images": "100"}
    client.log_batch(rid, metrics=[Metric(k, v, 0, 5) for k, v in main.items()],
                     params=[Param(k, v) for k, v in params.items()])
    if child is not None:
        a = analysis_run(client, rid, ANALYSIS)
        client.log_batch(a.run_id, metrics=[Metric(k, v, 0, 5) for k, v in child.items()])
        if per_image is not None:
            path = folder / f"{name}" / "per_image.csv"
            path.parent.mkdir(parents=True)
            per_image.to_csv(path, index=False)
            client.log_artifact(a.run_id, str(path), "likelihood")
        a.finish()
    client.set_terminated(rid, "FINISHED")
    return rid


GAPS_OK = {"gap/amortization": 3.0, "gap/amortization_stderr": 0.2, "gap/approximation": 2.0,
           "gap/approximation_stderr": 0.1}


@pytest.fixture
def logged(tracking_uri: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("vae-bench", artifact_location=str(tmp_path / "artifacts"))
    ais = {"test_nll_ais": 100.0, "test_nll_ais_stderr": 0.15}
    ids = {
        "good": _run(client, exp, "sgvb_b-z20-L1-s1", 1, ais, {"nll_ladder/K1000": 100.5,
                                                              "nll_ladder/K1000_stderr": 0.15, **GAPS_OK}),
        # AIS 2 nats above L_1000, 7 combined standard errors
        "above": _run(client, exp, "iwae_k5-z20-L1-s1", 1, {"test_nll_ais": 102.0, "test_nll_ais_stderr": 0.2},
                      {"nll_ladder/K1000": 100.0, "nll_ladder/K1000_stderr": 0.2, **GAPS_OK}),
        # 0.3 below, 1.4 combined standard errors: within z = 2, not within z = 1
        "close": _run(client, exp, "sgvb_a-z20-L1-s1", 1, ais, {"nll_ladder/K1000": 99.7,
                                                               "nll_ladder/K1000_stderr": 0.15, **GAPS_OK}),
        "negative_gap": _run(client, exp, "sgvb_b_gauss-z20-L1-s1", 1, ais,
                             {"nll_ladder/K1000": 101.0, "nll_ladder/K1000_stderr": 0.15, **GAPS_OK,
                              "gap/amortization": -0.5, "gap/amortization_stderr": 0.1}),
        "no_ladder": _run(client, exp, "iwae_dreg_k5-z20-L1-s1", 1, ais, dict(GAPS_OK)),
        "no_analysis": _run(client, exp, "iwae_stl_k5-z20-L1-s1", 1, ais, None),
    }
    # Paired: the images' spread (sd 13) hides a consistent 0.05 nats by which AIS is below L_1000 on every image
    # from the unpaired error (1.3 each), not from the paired one (0.003).
    rng = np.random.default_rng(0)
    lp = -100 + 13 * rng.standard_normal(100)
    lk = lp + 0.05 + 0.03 * rng.standard_normal(100)
    table = pd.DataFrame({"image": range(100), "log_px_ais": lp, "L_K1000": lk})
    se = float(np.std(lp, ddof=1) / 10)
    ids["paired"] = _run(client, exp, "sgvb_b_l5-z20-L5-s1", 1,
                         {"test_nll_ais": -float(lp.mean()), "test_nll_ais_stderr": se},
                         {"nll_ladder/K1000": -float(lk.mean()), "nll_ladder/K1000_stderr": se, **GAPS_OK},
                         table, tmp_path)
    # a run without AIS is not checked at all
    client.log_batch(client.create_run(exp, run_name="sgvb_b-z20-L1-s2").info.run_id,
                     metrics=[Metric("test_nll", 99.0, 0, 5)], params=[Param("variant", "sgvb_b")])
    return tracking_uri, ids


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env={**os.environ, **CODE}, capture_output=True,
                          text=True, timeout=120)


def test_violations_are_flagged_and_the_status_is_1(logged: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    uri, ids = logged
    done = _script(uri, "--csv", str(tmp_path / "c.csv"))
    assert done.returncode == 1, done.stdout + done.stderr
    t = pd.read_csv(tmp_path / "c.csv").set_index("run_id")
    assert len(t) == 7  # the run without test_nll_ais is left out
    verdict = {k: t.at[v, "verdict"] for k, v in ids.items()}
    assert verdict["good"] == "ok" and verdict["close"] == "ok"
    assert verdict["above"] == "VIOLATION: L_1000 - AIS < 0"
    assert verdict["negative_gap"] == "VIOLATION: gap/amortization < 0"
    assert verdict["no_ladder"] == "MISSING: nll_ladder/K1000"
    assert verdict["no_analysis"] == "MISSING: nll_ladder/K1000, gap/amortization, gap/approximation"
    assert verdict["paired"] == "VIOLATION: L_1000 - AIS < 0" and bool(t.at[ids["paired"], "slack_paired"])
    assert t.at[ids["paired"], "slack_stderr"] < 0.01
    assert not t.at[ids["above"], "slack_paired"]  # no per-image table: the unpaired error
    assert t.at[ids["above"], "slack_stderr"] == pytest.approx(math.hypot(0.2, 0.2))
    assert t.at[ids["good"], "ais_settings"] == "T=300 C=4 encoder N=100"
    assert "2 of 7 runs pass (z = 2" in done.stdout
    for k in ("above", "negative_gap", "no_ladder", "no_analysis", "paired"):
        assert f"FAIL {t.at[ids[k], 'run']} ({ids[k]})" in done.stdout
    assert f"({ids['good']})" not in done.stdout.split("runs pass")[1]


def test_a_per_image_table_that_cannot_be_read_is_said_not_silently_unpaired(
        logged: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    uri, ids = logged
    client = MlflowClient(uri)
    child = find_analysis_run(client, ids["paired"], ANALYSIS)
    table = Path(client.get_run(child).info.artifact_uri.removeprefix("file://")) / "likelihood" / "per_image.csv"
    table.unlink()
    table.mkdir()  # listed, but no file to read
    done = _script(uri, "--csv", str(tmp_path / "c.csv"))
    t = pd.read_csv(tmp_path / "c.csv").set_index("run_id")
    assert not t.at[ids["paired"], "slack_paired"]
    assert "1 per-image tables could not be read, so their slack's standard error is unpaired" in done.stderr


def test_the_level_is_the_users(logged: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    uri, ids = logged
    assert check.main([uri, "--z", "1"]) == 1
    out = capsys.readouterr().out
    assert "1 of 7 runs pass (z = 1" in out and f"({ids['close']}): VIOLATION: L_1000 - AIS < 0" in out


def test_a_store_with_no_ais_run_or_no_store_is_status_2(tracking_uri: str, tmp_path: Path) -> None:
    empty = _script(tracking_uri)
    assert empty.returncode == 2 and "no training run" in empty.stderr and "test_nll_ais" in empty.stderr
    missing = _script(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no MLflow store at" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
