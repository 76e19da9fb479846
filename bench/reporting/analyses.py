"""The analyses of a training run (bench.tracking.analyses: runs nested under it) folded into its row.

A report reads one row per training run. Its analyses' metrics (gradvar/..., snr/..., gap/...) are joined onto
that row as if they had been logged there, which is where stores made before analysis runs existed have them:
both kinds of store give the same frame. An analysis run's value wins over one of the same name on the parent
(the newer place). Analysis runs themselves never become rows.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow import MlflowClient

from bench.tracking.names import ANALYSIS_OF_TAG, ANALYSIS_TAG
from bench.tracking.store import fluent_tracking_uri

ANALYSIS_COL = f"tags.{ANALYSIS_TAG}"
PARENT_COL = f"tags.{ANALYSIS_OF_TAG}"


def search_analyses(client: MlflowClient, experiment_ids: list[str]) -> pd.DataFrame:
    """Every analysis run of these experiments (the raw ``mlflow.search_runs`` frame), oldest first."""
    with fluent_tracking_uri(client.tracking_uri):
        df = mlflow.search_runs(experiment_ids=experiment_ids, filter_string=f"tags.`{ANALYSIS_TAG}` != ''",
                                output_format="pandas", order_by=["attributes.start_time ASC"])
    return df


def split_analyses(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training and other runs, analysis runs) of a raw search frame."""
    if ANALYSIS_COL not in raw:
        return raw, raw.iloc[0:0]
    is_analysis = raw[ANALYSIS_COL].notna() & (raw[ANALYSIS_COL].astype(str) != "")
    return raw[~is_analysis].reset_index(drop=True), raw[is_analysis].reset_index(drop=True)


def attach_analyses(raw: pd.DataFrame, analyses: pd.DataFrame) -> pd.DataFrame:
    """``raw`` (training runs) with the metrics of their analysis runs as ``metrics.*`` columns of their rows."""
    if analyses.empty or PARENT_COL not in analyses:
        return raw
    metric_cols = [c for c in analyses if c.startswith("metrics.")]
    mine = analyses[analyses[PARENT_COL].isin(set(raw["run_id"]))]
    if mine.empty or not metric_cols:
        return raw
    # Later analysis runs of one parent overwrite earlier ones metric by metric (groupby.last skips NaN).
    per_parent = mine.groupby(PARENT_COL, sort=True)[metric_cols].last()
    out = raw.copy()
    index = out["run_id"]
    for c in metric_cols:
        values = index.map(per_parent[c])
        out[c] = values.where(values.notna(), out[c]) if c in out else values
    return out
