"""The report's gradient-variance section reads evaluation/gradvar.csv from the analysis run "gradient variance"
(bench.evaluate since issue 19) and from the training run itself in stores made before: both give the same frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from bench.reporting.data import load
from bench.reporting.gradvar import CSV_COLUMNS, measurements
from bench.reporting.sections import Ctx
from bench.tracking.analyses import analysis_run
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import GRADVAR_ANALYSIS


def _csv(folder: Path, scale: float) -> Path:
    rows = [{"label": label, "estimator": label, "samples": 1, "part": part, "batch": b,
             "variance": scale * (1 + b) * (10 if label == "score_function" else 1), "snr": 1.0}
            for label in ("sgvb_b", "score_function") for part in ("encoder", "decoder") for b in (0, 1)]
    path = folder / "gradvar.csv"
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(path, index=False)
    return path


def test_gradvar_csv_is_read_from_the_analysis_run_and_from_old_stores(tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri)
    for seed in (1, 2):  # seed 1: the analysis run holds the results; seed 2: the training run (an old store)
        t = MlflowTracker.start(client, "vae-bench", f"sgvb_b-z2-L1-s{seed}",
                                {"variant": "sgvb_b", "latent": 2, "seed": seed}, {"bench.sweep": "s"})
        t.log_metrics({"train_loss": 150.0, "test_loss": 140.0}, step=1)
        folder = tmp_path / str(seed)
        folder.mkdir()
        target = analysis_run(client, t.run_id, GRADVAR_ANALYSIS) if seed == 1 else t
        means = {"gradvar/encoder/sgvb_b": 1.5 * seed, "gradvar/encoder/score_function": 15.0 * seed}
        target.log_metrics(means, step=1)  # the means of the CSV's two minibatches
        target.log_artifact(_csv(folder, float(seed)), "evaluation")
        if seed == 1:
            target.finish()
            # a stale CSV on the new layout's training run must not win over its analysis run's
            t.log_artifact(_csv(tmp_path / "1" / "..", 100.0), "evaluation")
        t.finish()
    data = load(client, sweep="s")
    ctx = Ctx(data=data, out=tmp_path / "report", colours={}, figures=[])
    gv = measurements(ctx)
    assert sorted(gv["seed"].unique()) == [1, 2] and len(gv) == 16  # both runs, every minibatch of their CSVs
    enc = gv[(gv["part"] == "encoder") & (gv["label"] == "sgvb_b")].set_index(["seed", "batch"])["variance"]
    assert enc.to_dict() == {(1, 0): 1.0, (1, 1): 2.0, (2, 0): 2.0, (2, 1): 4.0}
