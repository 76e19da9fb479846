"""Analysis runs: nested under their training run, with its params and filterable tags, made once and reused."""

from __future__ import annotations

from mlflow import MlflowClient

from bench.tracking.analyses import analysis_run, find_analysis_run
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import ANALYSIS_OF_TAG, ANALYSIS_TAG, OWNER_TAG, PARENT_TAG


def test_an_analysis_run_is_nested_inherits_params_and_is_reused(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    tags = {"bench.sweep": "s1", OWNER_TAG.format("abc"): "x", "bench.nll_samples.step5": "9",
            "bench.in_sweep.s1": "true"}
    parent = MlflowTracker.start(client, "vae-bench", "sgvb_b-z20-L1-s1", {"variant": "sgvb_b", "latent": 20}, tags)
    parent.finish()
    first = analysis_run(client, parent.run_id, "gradient variance")
    run = client.get_run(first.run_id)
    assert run.info.run_name == "sgvb_b-z20-L1-s1 · gradient variance"
    assert run.data.params == {"variant": "sgvb_b", "latent": "20"}
    assert run.data.tags[PARENT_TAG] == parent.run_id and run.data.tags[ANALYSIS_OF_TAG] == parent.run_id
    assert run.data.tags[ANALYSIS_TAG] == "gradient variance" and run.data.tags["bench.sweep"] == "s1"
    assert OWNER_TAG.format("abc") not in run.data.tags and "bench.nll_samples.step5" not in run.data.tags
    assert "bench.in_sweep.s1" not in run.data.tags  # a sweep's printed filter lists its training runs only
    first.finish()
    again = analysis_run(client, parent.run_id, "gradient variance")
    assert again.run_id == first.run_id and client.get_run(again.run_id).info.status == "RUNNING"
    other = analysis_run(client, parent.run_id, "likelihood")
    assert other.run_id != first.run_id
    assert find_analysis_run(client, parent.run_id, "likelihood") == other.run_id
    assert find_analysis_run(client, parent.run_id, "snr") is None
    assert client.get_run(parent.run_id).info.status == "FINISHED"
