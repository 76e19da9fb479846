"""The report's context (Ctx) and its plainer sections, each a function (ctx) -> Markdown lines: trends, pictures,
tuning studies, failed runs, missing metrics, configuration and the run list. The header and summary are in
header.py, comparisons in comparisons.py, per-epoch differences and compute in compute.py, gradient variance in
gradvar.py, the seed's and the papers' numbers in anchors.py."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.reporting.data import CORE_METRICS, ReportData, config_params
from bench.reporting.markdown import DASH, esc, num, short, slug, table
from bench.reporting.tables import Tables

REPO = Path(__file__).resolve().parents[2]
FIGURES = "figures"
MIN_IMPORTANCE_TRIALS = 30  # completed trials below which Optuna's importances are noise (see tuning(); none shown)


@dataclass
class Ctx:
    data: ReportData
    out: Path
    colours: dict[str, tuple[float, float, float]]
    figures: list[str]
    tables: Tables = field(default_factory=Tables)
    baseline: str = "sgvb_b"  # the variant the per-epoch difference curves are taken against
    pairs: list[tuple[str, str]] = field(default_factory=list)  # --compare A:B
    paired: pd.DataFrame | None = None  # every paired comparison (comparisons.paired_table), computed once

    def table(self, name: str, rows: list[dict[str, Any]], csv: pd.DataFrame | None = None) -> str:
        """A Markdown table of ``rows``, also written as tables/<name>.csv (``csv`` if given, else the rows)."""
        self.tables.add(name, csv if csv is not None else pd.DataFrame(rows))
        return table(rows)

    @property
    def fin(self) -> pd.DataFrame:
        return self.data.finished

    def figure(self, name: str) -> Path:
        self.figures.append(name)
        return self.out / FIGURES / name

    def has(self, metric: str, runs: pd.DataFrame | None = None) -> bool:
        runs = self.fin if runs is None else runs
        return metric in runs and bool(runs[metric].notna().any())


def family(decoder: Any) -> str:
    return str(decoder) if pd.notna(decoder) else "unknown"


def recon_name(fam: str) -> str:
    return {"bernoulli": "BCE", "gaussian": "Gaussian −log N"}.get(fam, "reconstruction")


def long_history(ctx: Ctx, metrics: list[str], runs: pd.DataFrame) -> pd.DataFrame:
    h = ctx.data.history
    h = h[h["metric"].isin(metrics) & h["run_id"].isin(runs["run_id"])]
    meta = runs[["run_id", "label", "latent", "seed"]]
    df = h.merge(meta, on="run_id", how="inner").rename(columns={"step": "epoch", "metric": "quantity"})
    return df.sort_values(["label", "latent", "seed", "quantity", "epoch"], kind="stable").reset_index(drop=True)


def trends(ctx: Ctx, figures: bool) -> list[str]:
    from bench.reporting import figures as rf

    fin = ctx.fin
    lines = ["## Trends", "",
             "Each line is the mean over seeds and the band ±1 standard deviation; columns are latent sizes. "
             "The seed's observation — reconstruction falls while KL rises as training goes on — shows as the "
             "middle row going down while the bottom row goes up.", ""]
    for fam in sorted(fin["decoder"].map(family).unique()):
        runs = fin[fin["decoder"].map(family) == fam]
        for split in ("test", "train"):
            rows = [(f"{split}_loss", "−ELBO"), (f"{split}_recon", recon_name(fam)),
                    (f"{split}_kld", "KL")]
            long = long_history(ctx, [q for q, _ in rows], runs)
            if long.empty:
                continue
            name = f"trends_{split}_{fam}.png"
            title = f"{split.capitalize()} −ELBO, reconstruction and KL per epoch ({fam.capitalize()} decoder)"
            if figures:
                colours = {k: v for k, v in ctx.colours.items() if k in set(long["label"])}
                rf.trends(long, rows, colours, title, ctx.figure(name))
            lines += [f"![{title}]({FIGURES}/{name})", ""]
    lines += seed_observation(ctx)
    return lines


def seed_observation(ctx: Ctx) -> list[str]:
    """Does training reconstruction fall and KL rise from the first to the last epoch, as the seed saw?"""
    long = long_history(ctx, ["train_recon", "train_kld"], ctx.fin)
    if long.empty or long["epoch"].nunique() < 2:
        return []
    means = long.groupby(["label", "latent", "quantity", "epoch"])["value"].mean()
    seen, total, examples = 0, 0, []
    for (label, latent), g in means.groupby(level=["label", "latent"], sort=True):
        g = g.droplevel(["label", "latent"])
        try:
            r, k = g.loc["train_recon"], g.loc["train_kld"]
        except KeyError:
            continue
        if len(r) < 2 or len(k) < 2:
            continue
        total += 1
        ok = r.iloc[-1] < r.iloc[0] and k.iloc[-1] > k.iloc[0]
        seen += ok
        examples.append(f"{label} z={latent}: reconstruction {r.iloc[0]:.1f} → {r.iloc[-1]:.1f}, "
                        f"KL {k.iloc[0]:.1f} → {k.iloc[-1]:.1f} (epochs {r.index[0]}–{r.index[-1]})")
    if not total:
        return []
    lines = [f"Training reconstruction fell and KL rose from the first to the last epoch in **{seen} of {total}** "
             "variant × latent settings (the seed: BCE ~150 → ~81, KLD ~14 → ~25 over 10 epochs).", "",
             "<details><summary>Per setting (training set, mean over seeds)</summary>", ""]
    lines += [f"- {e}" for e in examples] + ["", "</details>", ""]
    return lines


def pictures(ctx: Ctx, figures: bool) -> list[str]:
    """The best finished run of each variant (lowest final test −ELBO): its last epoch's grids."""
    lines = ["## Reconstructions and samples", "",
             "For each variant, its best finished run (lowest final test −ELBO over latent sizes and seeds) at its "
             "last epoch: 8 test digits above their reconstructions, and decodes of 64 draws from the prior.", ""]
    client = None
    rows = []
    used: set[str] = set()
    for label, g in ctx.fin.groupby("label", sort=True):
        g = g.sort_values(["test_loss", "run_id"], na_position="last", kind="stable")
        best = g.iloc[0]
        if pd.isna(best.get("test_loss")):
            continue
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient(ctx.data.uri)
        s = slug(label)
        while s in used:
            s += "-"
        used.add(s)
        links = {}
        for kind in ("reconstruction", "samples"):
            name = f"best_{s}_{kind}.png"
            if not figures or fetch_image(client, best["run_id"], kind, ctx.figure(name)):
                links[kind] = f"![{kind}, {esc(label)}]({FIGURES}/{name})"
        if not links:
            continue
        rows.append({"variant": label, "best run": f"{best['run_name']} (`{best['run_id'][:8]}`)",
                     "z": best["latent"], "test −ELBO": f"{best['test_loss']:.2f}",
                     "reconstructions (top: data)": links.get("reconstruction", "not logged"),
                     "samples": links.get("samples", "not logged")})
    if not rows:
        return lines + ["No finished run here logged its images.", ""]
    return lines + [ctx.table("best_runs", rows), ""]


def fetch_image(client: Any, run_id: str, kind: str, dest: Path) -> bool:
    """Copy the run's last images/<kind>_NNN.png to dest; False when the run has none."""
    try:
        files = [a.path for a in client.list_artifacts(run_id, "images")]
    except Exception:
        return False
    found = sorted(p for p in files if re.fullmatch(rf"images/{kind}_\d+\.png", p))
    if not found:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vae-bench-report-") as tmp:
        local = client.download_artifacts(run_id, found[-1], tmp)
        shutil.copyfile(local, dest)
    return True


def tuning(ctx: Ctx) -> list[str]:
    """One row per Optuna study (bench.tune): trial counts from the trials' runs, the best trial from the parent's
    best.* tags (else the finished trial with the lowest objective)."""
    runs = ctx.data.runs
    studies = runs[runs["role"] == "study"]
    if studies.empty:
        return []
    rows = []
    for _, study in studies.sort_values(["study", "run_name", "run_id"], na_position="last").iterrows():
        trials = runs[(runs["parent_run_id"] == study["run_id"]) & (runs["role"] == "trial")]
        if trials.empty and str(study.get("kind")) not in ("tune", "nan", "None"):
            continue  # the parent of something that is not a tuning study
        objective = str(study["objective"]) if pd.notna(study.get("objective")) else "val_loss"
        status = trials["status"].value_counts()
        pruned = int(trials["failure"].fillna("").str.startswith("pruned").sum())
        best_params = {c[len("best."):]: study[c] for c in runs if c.startswith("best.") and
                       c not in ("best.trial", "best.run_id") and pd.notna(study[c])}
        best_value = study.get("best_value")
        best_trial = study.get("best.trial")
        done = trials[trials["status"] == "FINISHED"]
        if pd.isna(best_value) and objective in done and done[objective].notna().any():
            best = done.sort_values([objective, "run_id"], kind="stable").iloc[0]
            best_value, best_trial = best[objective], best.get("run_name")
            keys = [k for k in config_params(ctx.data.params) if k in trials and trials[k].nunique() > 1]
            best_params = {k: best[k] for k in keys}
        rows.append({
            "study": esc(study["study"] if pd.notna(study["study"]) else study["run_name"]),
            "variant": study.get("variant", DASH), "z": study.get("latent", DASH),
            "epochs": study.get("epochs", DASH), "trials": len(trials),
            "completed": int(status.get("FINISHED", 0)), "pruned": pruned,
            "killed": int(status.get("KILLED", 0)) - pruned, "failed": int(status.get("FAILED", 0)),
            f"best {objective}": DASH if pd.isna(best_value) else f"{best_value:.2f}"
            + (f" (trial {best_trial})" if pd.notna(best_trial) else ""),
            "best params": ", ".join(f"{k}={short(v)}" for k, v in sorted(best_params.items())) or DASH})
    if not rows:
        return []
    where = sorted(set(studies["experiment"]))
    return ["## Tuning studies", "",
            f"Optuna studies of bench.tune (experiment {', '.join(f'`{w}`' for w in where)}): each is an MLflow "
            "parent run with one child run per trial. Trials are chosen on held-out training images "
            "(`val_loss`), never on the test set; pruned trials end KILLED and are not failures.", "",
            ctx.table("tuning_studies", rows), "",
            f"Each study's run also holds Optuna's plots as artifacts. Its parameter-importance plot is left out of "
            f"this report: importances are fitted to the completed trials (fANOVA, a random forest), and below "
            f"{MIN_IMPORTANCE_TRIALS} of them — about ten per searched parameter (learning rate, batch size, hidden "
            "width), on objectives whose seed-to-seed noise is of the size of the effects — they mostly "
            "reflect where the sampler happened to look. Read it, if at all, for studies above that size.", ""]


def failures(ctx: Ctx) -> list[str]:
    main = ctx.data.main
    bad = main[main["status"] != "FINISHED"]
    lines = ["## Failed, killed and unfinished runs", ""]
    if bad.empty:
        return lines + ["None: every run finished.", ""]
    rows = []
    for _, r in bad.sort_values(["status", "label", "latent", "seed", "run_id"], kind="stable").iterrows():
        rows.append({"status": r["status"], "run": f"{esc(r['run_name'])} (`{r['run_id'][:8]}`)",
                     "variant": esc(r["label"]), "z": r["latent"] if pd.notna(r["latent"]) else DASH,
                     "seed": r["seed"] if pd.notna(r["seed"]) else DASH, "epochs logged": r["epochs_logged"],
                     "last test −ELBO": f"{r['test_loss']:.2f}" if pd.notna(r.get("test_loss")) else DASH,
                     "reason (bench.failure)": esc(r["failure"]) if pd.notna(r["failure"]) else DASH})
    return lines + ["Listed apart and left out of every average above.", "", ctx.table("unfinished_runs", rows), ""]


def missing(ctx: Ctx) -> list[str]:
    rows = []
    stale_keys = set(zip(ctx.data.stale["run_id"], ctx.data.stale["metric"], strict=True))
    for _, r in ctx.fin.iterrows():  # a stale value is not missing: the next section lists it
        absent = [m for m in CORE_METRICS if (m not in r or pd.isna(r[m])) and (r["run_id"], m) not in stale_keys]
        target = num(r.get("epochs"))
        short = target is not None and r["epochs_logged"] < target
        if absent or short:
            rows.append({"run": f"{esc(r['run_name'])} (`{r['run_id'][:8]}`)", "variant": esc(r["label"]),
                         "missing metrics": ", ".join(absent) or DASH,
                         "epochs logged": f"{r['epochs_logged']} of {int(target)}" if target is not None
                         else str(r["epochs_logged"])})
    lines = []
    if rows:
        lines += ["## Finished runs with missing metrics", "",
                  "These runs are FINISHED but lack some per-epoch metrics or epochs; they stay in the averages for "
                  "the metrics they have (cells then say *k of n runs*).", "", ctx.table("missing_metrics", rows), ""]
    return lines + stale(ctx)


def stale(ctx: Ctx) -> list[str]:
    """Runs whose latest value of a compared metric predates their final epoch (data.drop_stale left it out)."""
    st = ctx.data.stale
    if st.empty:
        return []
    names = ctx.data.runs.set_index("run_id")
    rows = [{"run": f"{esc(names.at[r.run_id, 'run_name'])} (`{r.run_id[:8]}`)",
             "variant": esc(names.at[r.run_id, "label"]), "metric": r.metric,
             "not re-evaluated at epoch": str(r.epochs), "latest value from epoch": str(r.step)}
            for r in st.itertuples()]
    return ["## Metrics not re-evaluated at the final epoch", "",
            "These values were measured before the run reached its epochs target (e.g. a run resumed to more "
            "epochs and not evaluated again). They are left out of every average and comparison; "
            "`bench.evaluate --run-id ID` measures them at the final epoch.", "",
            ctx.table("stale_metrics", rows), ""]


def configuration(ctx: Ctx) -> list[str]:
    fin = ctx.fin
    keys = [k for k in ctx.data.params if k in fin and fin[k].notna().any()]
    same = {k: fin[k].iloc[0] for k in keys if fin[k].nunique(dropna=False) == 1}
    varied = [k for k in keys if k not in same]
    lines = ["## Configuration", "",
             "Params shared by every finished run: " + ", ".join(f"`{k}={v}`" for k, v in sorted(same.items())) + ".",
             ""]
    if varied:
        lines += ["Params that vary between runs: " + ", ".join(f"`{k}`" for k in sorted(varied)) + ".", ""]
    return lines


def all_runs(ctx: Ctx) -> list[str]:
    rows = []
    for _, r in ctx.data.main.iterrows():
        rows.append({"run": esc(r["run_name"]), "id": f"`{r['run_id'][:8]}`", "status": r["status"],
                     "variant": esc(r["label"]), "z": r["latent"] if pd.notna(r["latent"]) else DASH,
                     "seed": r["seed"] if pd.notna(r["seed"]) else DASH, "epochs": r["epochs_logged"],
                     "test −ELBO": f"{r['test_loss']:.2f}" if pd.notna(r.get("test_loss")) else DASH})
    csv = ctx.data.main[["run_id", "run_name", "status", "label", "latent", "seed", "epochs_logged"]].rename(
        columns={"label": "variant", "epochs_logged": "epochs"}).assign(
        test_loss=ctx.data.main.get("test_loss"), git_commit=ctx.data.main.get("git_commit"))
    return ["<details><summary>Every run in this report</summary>", "",
            ctx.table("runs", rows, csv), "", "</details>", ""]
