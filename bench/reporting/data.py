"""MLflow -> pandas for bench.report: one row per run, and the per-epoch metric histories in long form.

Runs come from ``mlflow.search_runs``; histories from the store's bulk query where it has one (SQL stores:
one query per metric for up to 500 runs), else ``MlflowClient.get_metric_history`` in a thread pool.
Everything is sorted, so the same store always gives the same frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow import MlflowClient

from bench.errors import UserError
from bench.reporting.analyses import attach_analyses, search_analyses, split_analyses
from bench.reporting.config import config_params
from bench.tracking.names import (
    DEFAULT_EXPERIMENT,
    EPOCHS_TAG,
    FAILURE_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    MEMBER_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SETTING_TAG,
    STUDY_TAG,
    SWEEP_TAG,
    TUNE_EXPERIMENT,
)
from bench.tracking.store import fluent_tracking_uri

# Per-epoch metrics of the harness; their histories feed the trend figures and the anchor comparisons.
HISTORY_METRICS = ("train_loss", "train_recon", "train_kld", "test_loss", "test_recon", "test_kld",
                   "test_mse", "epoch_seconds")
CORE_METRICS = HISTORY_METRICS  # a finished run of bench.run has all of these; a run without one is flagged
CHUNK = 500  # run ids per bulk query
# The metrics a comparison pairs: each must be the run's value at its final epoch (stale values are dropped).
FINAL_METRICS = ("test_loss", "test_kld", "test_mse", "test_nll", "active_units")


@dataclass
class ReportData:
    """What a report is made from. ``runs``: one row per run, with columns run_id, run_name, status,
    experiment, failure, parent_run_id, study, sweep, role (main | trial | study | sweep), label, latent, seed,
    epochs_logged, every param (str) in ``params`` and every final metric (float) in ``metrics``.
    ``history``: run_id, metric, step, value for HISTORY_METRICS of the main runs."""

    uri: str
    experiments: list[str]
    sweep: str | None
    runs: pd.DataFrame
    history: pd.DataFrame
    params: list[str]
    metrics: list[str]
    # run_id, metric, step, epochs: a FINAL_METRICS value logged before the run's epochs target (set to NaN in
    # ``runs``), e.g. a test NLL of epoch 10 on a run resumed to 20 epochs and not re-evaluated
    stale: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(
        columns=["run_id", "metric", "step", "epochs"]))

    @property
    def main(self) -> pd.DataFrame:
        """Runs of the comparison (not tuning trials or study parents), all statuses."""
        return self.runs[self.runs["role"] == "main"]

    @property
    def finished(self) -> pd.DataFrame:
        """The runs that are averaged: main runs with status FINISHED."""
        m = self.main
        return m[m["status"] == "FINISHED"]


def latest_setting(raw: pd.DataFrame, name: str, first: pd.Series) -> pd.Series:
    """Per run, the value of an evaluation setting behind its metrics' latest values: the last entry of the tag
    bench.<name>.step<N> at the largest N (MLflow's latest value is the one at the largest step, and the tag lists
    the values used at a step in the order they were logged); ``first`` (the param) where no tag says."""
    prefix = "tags." + SETTING_TAG.format(name, "")
    steps = sorted((c for c in raw if c.startswith(prefix) and c[len(prefix):].isdigit()),
                   key=lambda c: int(c[len(prefix):]))
    out = first.astype(object).copy()
    for c in steps:  # larger steps overwrite smaller ones
        last = raw[c].dropna().astype(str).str.split(",").str[-1]
        out.loc[last.index] = last
    return out


def _quote(value: str, what: str) -> str:
    if "'" in value or "`" in value:
        raise UserError(f"{what} {value!r} contains a quote; give a name without quotes")
    return value


def _experiments(client: MlflowClient, name: str | None, sweep: str | None) -> list[tuple[str, str]]:
    """(id, name) of the experiments to search: the named one, or all of them for a sweep alone."""
    if name is None and sweep is not None:
        return sorted((e.experiment_id, e.name) for e in client.search_experiments())
    name = name or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        hint = f"experiments there: {', '.join(known)}" if known else "it has no experiments"
        raise UserError(f"no experiment named {name!r} in {client.tracking_uri}; {hint}")
    return [(exp.experiment_id, exp.name)]


def search(client: MlflowClient, experiment: str | None = None, sweep: str | None = None) -> tuple[
        pd.DataFrame, list[str]]:
    """The raw ``mlflow.search_runs`` frame of the experiment (and sweep), and the experiment names."""
    exps = _experiments(client, experiment, sweep)
    ids = [i for i, _ in exps]
    flt = f"tags.`{SWEEP_TAG}` = '{_quote(sweep, 'sweep')}'" if sweep else ""
    with fluent_tracking_uri(client.tracking_uri):
        df = mlflow.search_runs(experiment_ids=ids, filter_string=flt, output_format="pandas")
        if sweep:  # and the runs the sweep reused from earlier sweeps (bench.grid tags them)
            reused = mlflow.search_runs(experiment_ids=ids, output_format="pandas",
                                        filter_string=f"tags.`{MEMBER_TAG.format(sweep)}` = 'true'")
            if not reused.empty:
                df = reused if df.empty else pd.concat([df, reused], ignore_index=True)
                df = df.drop_duplicates("run_id", ignore_index=True)
        known = (mlflow.search_runs(experiment_ids=ids, filter_string=f"tags.`{SWEEP_TAG}` != ''",
                                    output_format="pandas") if sweep and df.empty else None)
    if known is not None:
        names = sorted(set(known.get(f"tags.{SWEEP_TAG}", pd.Series(dtype=object)).dropna()))
        where = f"experiment {exps[0][1]!r}" if experiment else client.tracking_uri
        hint = f"sweeps there: {', '.join(names)}" if names else "no run there has a sweep tag"
        raise UserError(f"no runs of sweep {sweep!r} in {where}; {hint}")
    df, _ = split_analyses(df)  # an analysis run carries its parent's tags, so a sweep's filter finds it too
    if df.empty:
        raise UserError(f"experiment {exps[0][1]!r} in {client.tracking_uri} has no runs")
    df = attach_analyses(df, search_analyses(client, ids))
    names = {i: n for i, n in exps}
    df["experiment"] = df["experiment_id"].map(names)
    return df, [n for _, n in exps if n in set(df["experiment"])]


def search_studies(client: MlflowClient, exclude: list[str]) -> pd.DataFrame:
    """The study parents and trials of bench.tune's experiment, unless it is already in the report."""
    exp = client.get_experiment_by_name(TUNE_EXPERIMENT)
    if exp is None or exp.name in exclude:
        return pd.DataFrame()
    with fluent_tracking_uri(client.tracking_uri):
        df = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` != ''",
                                output_format="pandas")
    df["experiment"] = exp.name
    return df


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series([None] * len(df), index=df.index, dtype=object)


def _to_int(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype("Int64")


EPOCH_METRICS = ("train_loss", "train_recon", "train_kld", "test_loss", "test_recon", "test_kld", "test_mse",
                 "epoch_seconds")


def tidy(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Plain column names, roles (main run, tuning trial, study parent), and a label per configuration."""
    params = sorted(c[len("params."):] for c in raw if c.startswith("params."))
    metrics = sorted(c[len("metrics."):] for c in raw if c.startswith("metrics."))
    cols: dict[str, pd.Series] = {
        "run_id": raw["run_id"].astype(object),
        "run_name": _col(raw, "tags.mlflow.runName").astype(object),
        "status": raw["status"].astype(object),
        "experiment": raw["experiment"].astype(object),
        "failure": _col(raw, f"tags.{FAILURE_TAG}").astype(object),
        "parent_run_id": _col(raw, f"tags.{PARENT_TAG}").astype(object),
        "sweep": _col(raw, f"tags.{SWEEP_TAG}").astype(object),
        "study": _col(raw, f"tags.{STUDY_TAG}").astype(object),
        "git_commit": _col(raw, f"tags.{GIT_COMMIT_TAG}").astype(object),
        "git_dirty": _col(raw, f"tags.{GIT_DIRTY_TAG}").astype(object),
    }
    for c in sorted(c for c in raw if c.startswith("tags.best.")):  # a study's best trial and params
        cols[c[len("tags."):]] = raw[c].astype(object)
    for p in params:
        cols[p] = raw[f"params.{p}"].astype(object)
    if "epochs" in cols:  # a resumed run's new target, which its params cannot take
        target = _col(raw, f"tags.{EPOCHS_TAG}").astype(object)
        cols["epochs"] = target.where(target.notna(), cols["epochs"])
    for m in metrics:  # a metric wins over a param of the same name (nll_samples is both)
        cols[m] = pd.to_numeric(raw[f"metrics.{m}"], errors="coerce").astype(float)
    for m in EPOCH_METRICS:  # runs trained --epochs 0 have none: the columns exist all the same, empty
        cols.setdefault(m, pd.Series(float("nan"), index=raw.index, dtype=float))
    if "nll_samples" in cols:  # the K of test_nll's latest value, not the first K the param kept
        cols["nll_samples"] = latest_setting(raw, "nll_samples", cols["nll_samples"])
    df = pd.DataFrame(cols)
    # Tuning trials and their study's parent run are reported apart. A run with a sweep tag is a run of the
    # comparison, whatever else it says (bench.grid hands combinations out as trials of an Optuna study).
    role = _col(raw, f"tags.{ROLE_TAG}").astype(object)
    trial = ((role == "trial") | df["parent_run_id"].notna()) & df["sweep"].isna()
    study = (role == "study") | df["run_id"].isin(set(df.loc[trial, "parent_run_id"]))
    df["role"] = "main"
    df.loc[trial, "role"] = "trial"
    df.loc[study & df["sweep"].isna(), "role"] = "study"
    df.loc[role == "sweep", "role"] = "sweep"  # a grid sweep's parent run: no metrics of its own, never compared
    df["latent"] = _to_int(_col(df, "latent"))
    df["seed"] = _to_int(_col(df, "seed"))
    df["variant"] = _col(df, "variant").fillna(df["run_name"].fillna("?")).astype(object)
    df["label"] = labels(df, params)
    df["run_name"] = df["run_name"].fillna(df["run_id"])
    df = df.sort_values(["label", "latent", "seed", "run_name", "run_id"], na_position="last", kind="stable")
    return df.reset_index(drop=True).copy(), params, metrics


def labels(df: pd.DataFrame, params: list[str]) -> pd.Series:
    """The variant name, plus ``key=value`` for each param that differs between finished main runs of that
    variant (so runs of one variant at two learning rates are never averaged together)."""
    keys = config_params(params)
    out = df["variant"].copy()
    main = df["role"] == "main"
    finished = main & (df["status"] == "FINISHED")
    for variant, group in df[main].groupby("variant", sort=True):
        done = group[finished[group.index]]
        varying = [k for k in keys if done[k].fillna("-").nunique() > 1]
        for idx, row in group.iterrows():
            extra = ", ".join(f"{k}={row[k] if pd.notna(row[k]) else '-'}" for k in varying)
            out.at[idx] = f"{variant} ({extra})" if extra else variant
    return out.astype(object)


def fetch_histories(client: MlflowClient, run_ids: list[str], metrics: Iterable[str],
                    method: str = "auto", workers: int = 8) -> pd.DataFrame:
    """Long frame run_id, metric, step, value (the last value logged at each step), sorted.

    method: "bulk" (the SQL store's one query per metric and 500 runs), "threads" (get_metric_history
    per run and metric in a thread pool; works with any store, e.g. an mlflow server), or "auto".
    """
    metrics = sorted(metrics)
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if method == "auto":
        method = "bulk" if hasattr(store, "get_metric_history_bulk") else "threads"
    rows: list[tuple[str, str, int, int, float]] = []
    if method == "bulk":
        for key in metrics:
            for i in range(0, len(run_ids), CHUNK):
                for m in store.get_metric_history_bulk(run_ids[i:i + CHUNK], key, max_results=10**9):
                    rows.append((m.run_id, key, m.step, m.timestamp, m.value))
    else:
        jobs = [(r, k) for r in run_ids for k in metrics]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for (r, k), hist in zip(jobs, pool.map(lambda j: client.get_metric_history(*j), jobs), strict=True):
                rows.extend((r, k, m.step, m.timestamp, m.value) for m in hist)
    h = pd.DataFrame(rows, columns=["run_id", "metric", "step", "timestamp", "value"])
    h = h.astype({"run_id": object, "metric": object, "step": int, "timestamp": int, "value": float})
    # A resumed run may log one step twice: keep the later value.
    h = h.sort_values(["run_id", "metric", "step", "timestamp", "value"], kind="stable")
    h = h.drop_duplicates(["run_id", "metric", "step"], keep="last").drop(columns="timestamp")
    return h.reset_index(drop=True)


def load(client: MlflowClient, experiment: str | None = None, sweep: str | None = None,
         history_method: str = "auto") -> ReportData:
    """Every run of the experiment (or sweep) and the histories of its main runs. Raises UserError when
    there is nothing to report: no such experiment or sweep, or no finished run."""
    raw, experiments = search(client, experiment, sweep)
    has_studies = (_col(raw, f"tags.{ROLE_TAG}") == "study").any()
    studies = search_studies(client, experiments)
    if not studies.empty:
        raw = pd.concat([raw, studies], ignore_index=True)
    runs, params, metrics = tidy(raw)
    if not studies.empty:  # only the studies and trials of the tuning experiment
        runs = runs[(runs["experiment"] != TUNE_EXPERIMENT) | (runs["role"] != "main")].reset_index(drop=True)
    where = f"sweep {sweep!r}" if sweep else f"experiment {experiments[0]!r}"
    data = ReportData(client.tracking_uri, experiments, sweep, runs, pd.DataFrame(), params, metrics)
    if data.finished.empty and not has_studies:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(data.main["status"].value_counts().items()))
        raise UserError(f"{where} has no finished runs to report ({counts}); train some with bench.run or "
                        "bench.grid first")
    main_ids = sorted(data.main["run_id"])
    wanted = [m for m in HISTORY_METRICS if m in metrics]
    data.history = fetch_histories(client, main_ids, wanted, method=history_method)
    last = data.history.groupby("run_id")["step"].max()
    runs["epochs_logged"] = runs["run_id"].map(last).fillna(0).astype(int)
    extra = [m for m in FINAL_METRICS if m in metrics and m not in wanted]
    steps = pd.concat([data.history[data.history["metric"].isin(FINAL_METRICS)],
                       fetch_histories(client, main_ids, extra, method=history_method)], ignore_index=True)
    data.stale = drop_stale(runs, steps)
    return data


def drop_stale(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Set to NaN, in ``runs``, every FINAL_METRICS value whose step is below the run's epochs target, and return
    those (run_id, metric, step, epochs). MLflow's latest value of a metric is the one at its largest step, so
    the largest step of its history is the step of the value search_runs gave."""
    cols = ["run_id", "metric", "step", "epochs"]
    if history.empty or "epochs" not in runs:
        return pd.DataFrame(columns=cols)
    step = history.groupby(["run_id", "metric"])["step"].max().rename("step").reset_index()
    target = pd.to_numeric(runs.set_index("run_id")["epochs"], errors="coerce")
    step["epochs"] = step["run_id"].map(target)
    stale = step[step["epochs"].notna() & (step["step"] < step["epochs"])].copy()
    stale["epochs"] = stale["epochs"].astype(int)
    index = runs.reset_index().set_index("run_id")["index"]
    for r in stale.itertuples():
        runs.loc[index[r.run_id], r.metric] = float("nan")
    return stale.sort_values(["run_id", "metric"])[cols].reset_index(drop=True)


