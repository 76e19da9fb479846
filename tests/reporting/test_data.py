"""Which K a run's test_nll was estimated with, as the report reads it."""

from __future__ import annotations

import pandas as pd

from bench.reporting.data import latest_setting


def test_the_k_of_the_latest_nll_comes_from_the_largest_steps_last_tag_entry() -> None:
    raw = pd.DataFrame({
        "params.nll_samples": ["100", "100", "5", None],
        # run 0: trained with K = 100, evaluated again with K = 1000 at the same step
        # run 1: K = 100 at step 5, K = 1000 at step 10 (resumed to more epochs)
        # run 2: no tag (a store from before the tags): the param stands; run 3: no NLL at all
        "tags.bench.nll_samples.step5": ["100,1000", "100", None, None],
        "tags.bench.nll_samples.step10": [None, "1000", None, None],
        "tags.bench.nll_samples.stepX": ["7", "7", "7", None],  # not a step: ignored
    })
    got = latest_setting(raw, "nll_samples", raw["params.nll_samples"])
    assert got.tolist()[:3] == ["1000", "1000", "5"] and pd.isna(got.iloc[3])


def test_analysis_runs_fold_into_their_training_runs_row_and_old_stores_read_the_same(tracking_uri: str) -> None:
    from mlflow import MlflowClient

    from bench.reporting.data import load
    from bench.tracking.analyses import analysis_run
    from bench.tracking.mlflow_tracker import MlflowTracker

    client = MlflowClient(tracking_uri)
    epoch = {"train_loss": 150.0, "test_loss": 140.0}
    runs = {}
    for seed in (1, 2):  # seed 1: the new layout (an analysis run); seed 2: a store from before it
        t = MlflowTracker.start(client, "vae-bench", f"sgvb_b-z2-L1-s{seed}",
                                {"variant": "sgvb_b", "latent": 2, "seed": seed}, {"bench.sweep": "s"})
        t.log_metrics(epoch, step=1)
        t.log_metrics({"test_nll": 130.0 + seed}, step=1)
        if seed == 1:
            a = analysis_run(client, t.run_id, "gradient variance")
            a.log_metrics({"gradvar/encoder/B": 3.0}, step=1)
            a.finish()
        else:
            t.log_metrics({"gradvar/encoder/B": 4.0}, step=1)
        t.finish()
        runs[seed] = t.run_id
    for sweep in (None, "s"):
        data = load(client, sweep=sweep)
        assert sorted(data.runs["run_id"]) == sorted(runs.values())  # no row for the analysis run
        by_seed = data.runs.set_index("seed")
        assert by_seed.loc[1, "gradvar/encoder/B"] == 3.0 and by_seed.loc[2, "gradvar/encoder/B"] == 4.0
        assert by_seed.loc[1, "test_nll"] == 131.0
