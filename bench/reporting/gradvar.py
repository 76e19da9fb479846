"""The report's gradient-variance section: bench.evaluate --gradient-variance's measurements (GRADVAR contract:
metrics gradvar/<part>/<label>, per-minibatch artifact evaluation/gradvar.csv), pooled over the runs (seeds) of
each trained variant, with bootstrap intervals (stats.bootstrap_ratio) on the encoder-variance ratios.

Runs without the per-minibatch CSV count with their metric (the mean over minibatches) as one minibatch; runs of
the earlier naming (gradvar_encoder_<label>) are read too.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from bench.reporting.markdown import DASH, table
from bench.reporting.sections import FIGURES, Ctx
from bench.reporting.stats import bootstrap_ratio, mean_se, sig2
from bench.tracking.analyses import find_analysis_run
from bench.tracking.names import GRADVAR_ANALYSIS

CSV_ARTIFACT = "evaluation/gradvar.csv"
CSV_COLUMNS = ["label", "estimator", "samples", "part", "batch", "variance", "snr"]
METRIC = re.compile(r"gradvar[/_](encoder|decoder)[/_](\w+)")
NAMES = {"sgvb_a": "SGVB A", "sgvb_b": "SGVB B", "score_function": "score function",
         "score_function_baseline": "score function + baseline", "sgvb_a_stl": "SGVB A-STL", "iwae": "IWAE",
         "iwae_dreg": "IWAE-DReG", "iwae_stl": "IWAE-STL"}


def metric_names(metrics: list[str]) -> dict[str, tuple[str, str]]:
    """{metric: (part, label)} of the gradient-variance metrics (not ratios or SNRs), both namings."""
    out = {}
    for m in metrics:
        if (hit := METRIC.fullmatch(m)) and not m.startswith("gradvar_ratio"):
            out[m] = (hit[1], hit[2])
    return out


def split_label(label: str) -> tuple[str, int | None]:
    """'sgvb_b_L4' -> ('sgvb_b', 4); 'iwae' -> ('iwae', None)."""
    m = re.fullmatch(r"(.+)_L(\d+)", label)
    return (m[1], int(m[2])) if m else (label, None)


def name(label: str, samples: Any = None) -> str:
    est, n = split_label(label)
    text = NAMES.get(est, est)
    if n is not None:
        return f"{text}, {'k' if est.startswith('iwae') else 'L'}={n}"
    if est.startswith("iwae") and pd.notna(samples):
        return f"{text}, k={int(samples)}"
    return text


def _read_csv(client: Any, run_id: str) -> pd.DataFrame | None:
    """The training run's evaluation/gradvar.csv: in its analysis run "gradient variance" (bench.evaluate since
    issue 19), else on the run itself (stores from before), else None."""
    analysis = find_analysis_run(client, run_id, GRADVAR_ANALYSIS)
    found = _read_csv_of(client, analysis) if analysis is not None else None
    return found if found is not None else _read_csv_of(client, run_id)


def _read_csv_of(client: Any, run_id: str) -> pd.DataFrame | None:
    try:
        if not any(a.path == CSV_ARTIFACT for a in client.list_artifacts(run_id, "evaluation")):
            return None
        with tempfile.TemporaryDirectory(prefix="vae-bench-report-") as tmp:
            df = pd.read_csv(Path(client.download_artifacts(run_id, CSV_ARTIFACT, tmp)))
    except Exception:  # an unreadable artifact: fall back on the run's metrics
        return None
    return df[CSV_COLUMNS] if set(CSV_COLUMNS) <= set(df.columns) else None


def measurements(ctx: Ctx) -> pd.DataFrame:
    """Long frame: run_id, variant (trained label), latent, seed, label, samples, part, batch, variance."""
    names = metric_names([m for m in ctx.data.metrics if ctx.has(m)])
    if not names:
        return pd.DataFrame()
    fin = ctx.fin
    measured = fin[fin[list(names)].notna().any(axis=1)]
    client = None
    frames = []
    for _, r in measured.iterrows():
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient(ctx.data.uri)
        df = _read_csv(client, r["run_id"])
        if df is None:
            df = pd.DataFrame([{"label": label, "estimator": split_label(label)[0], "samples": None, "part": part,
                                "batch": 0, "variance": r[m]} for m, (part, label) in names.items()
                               if pd.notna(r[m])])
        df = df.assign(run_id=r["run_id"], variant=r["label"], latent=r["latent"], seed=r["seed"])
        frames.append(df)
    gv = pd.concat(frames, ignore_index=True)
    gv = gv.drop_duplicates(["run_id", "label", "part", "batch"], keep="first")
    return gv.sort_values(["variant", "latent", "part", "label", "seed", "batch"], kind="stable").reset_index(
        drop=True)


def _order(label: str) -> tuple[int, int, str]:
    est, n = split_label(label)
    known = list(NAMES)
    return (n or 0, known.index(est) if est in known else len(known), est)


def ratios(gv: pd.DataFrame) -> pd.DataFrame:
    """Encoder variance of each label over SGVB B's at L = 1 (sgvb_b, else sgvb_b_L1), per trained variant and
    latent, bootstrapped over runs and minibatches."""
    rows = []
    enc = gv[gv["part"] == "encoder"]
    for (variant, latent), g in enc.groupby(["variant", "latent"], sort=True):
        base = next((b for b in ("sgvb_b", "sgvb_b_L1") if b in set(g["label"])), None)
        if base is None:
            continue
        den = g[g["label"] == base].pivot_table(index="run_id", columns="batch", values="variance")
        for label in sorted(set(g["label"]) - {base}, key=_order):
            num = g[g["label"] == label].pivot_table(index="run_id", columns="batch", values="variance")
            runs = sorted(set(num.index) & set(den.index))
            cols = sorted(set(num.columns) & set(den.columns))
            if not runs or not cols:
                continue
            r = bootstrap_ratio(num.loc[runs, cols].to_numpy(), den.loc[runs, cols].to_numpy())
            est, n = split_label(label)
            if n is None:  # the contract's CSV says how many samples a preset (IWAE's k) used
                s = g.loc[g["label"] == label, "samples"].dropna()
                n = int(s.iloc[0]) if len(s) else None
            rows.append({"variant": variant, "latent": latent, "label": label, "estimator": est, "samples": n,
                         "reference": base, "ratio": r.ratio, "ci_low": r.ci_low, "ci_high": r.ci_high,
                         "runs": r.runs, "batches": r.batches, "resampled": r.over})
    return pd.DataFrame(rows)


def interval(r: pd.Series) -> str:
    if pd.isna(r["ci_low"]):
        return f"{sig2(r['ratio'])} (no interval: {r['resampled'].split(': ')[0]})"
    return f"{sig2(r['ratio'])} [{sig2(r['ci_low'])}, {sig2(r['ci_high'])}]"


def gradient_variance(ctx: Ctx, figures: bool) -> list[str]:
    from bench.reporting import figures as rf

    lines = ["## Gradient variance", ""]
    gv = measurements(ctx)
    if gv.empty:
        return lines + ["Not measured in these runs (`python -m bench.evaluate --run-id RUN --gradient-variance` "
                        "logs it into a run).", ""]
    per_run = gv.groupby(["variant", "latent", "part", "label", "run_id"], sort=True)["variance"].mean()
    summary = []
    for (variant, latent, part, label), v in per_run.groupby(level=[0, 1, 2, 3], sort=True):
        n, mean, se = mean_se(v.to_numpy())
        summary.append({"variant": variant, "latent": latent, "part": part, "label": label, "n": n, "mean": mean,
                        "se": se})
    summary_df = pd.DataFrame(summary)
    ctx.tables.add("gradient_variance", summary_df)
    rat = ratios(gv)
    seeds = ", ".join(str(int(s)) for s in sorted(gv["seed"].dropna().unique()))
    batches = gv.groupby("run_id")["batch"].nunique()
    lines += [f"Total variance (summed over parameters) of each estimator's minibatch gradient at a trained model's "
              f"final parameters (`bench.evaluate --gradient-variance`), measured on {batches.min()}"
              f"{'' if batches.min() == batches.max() else f'–{batches.max()}'} minibatch(es) of test images per run, "
              f"in the runs of seeds {seeds}. The seed expects the naive score-function estimator to be far noisier "
              "than the reparameterised ones. Full per-label means ± standard errors over runs are in "
              "`tables/gradient_variance.csv`.", ""]
    if not rat.empty:
        ctx.tables.add("gradient_variance_ratios", rat)
        lines += ["**Encoder gradient variance relative to SGVB B at L = 1**, as ratio [95% bootstrap interval], "
                  "2 significant figures. The interval resamples the runs (seeds), then the minibatches of each "
                  "drawn run (the same minibatch for numerator and denominator); with one run it resamples "
                  "minibatches only, which says nothing about seed-to-seed spread.", ""]
        single = rat[~rat["label"].str.contains(r"_L\d+$")]
        sweep = rat[rat["label"].str.contains(r"_L\d+$")]
        for what, sub, col in (("by estimator (L = 1; IWAE at its preset k)", single, None),
                               ("at equal numbers of samples (L for A and B, k for IWAE)", sweep, "samples")):
            if sub.empty:
                continue
            rows = []
            for (variant, latent), g in sub.groupby(["variant", "latent"], sort=True):
                if col is None:
                    row: dict[str, Any] = {"trained variant": variant, "z": latent, "runs": int(g["runs"].max())}
                    for _, r in g.sort_values("label", key=lambda s: s.map(_order)).iterrows():
                        row[name(r["label"], r["samples"])] = interval(r)
                    rows.append(row)
                    continue
                for n, gn in g.groupby(g["label"].map(lambda s: split_label(s)[1]), sort=True):
                    row = {"trained variant": variant, "z": latent, "samples": n, "runs": int(gn["runs"].max())}
                    for _, r in gn.iterrows():
                        row[NAMES.get(r["estimator"], r["estimator"])] = interval(r)
                    rows.append(row)
            lines += [f"*{what[0].upper() + what[1:]}*", "", table(rows), ""]
            ctx.tables.add("gradient_variance_ratios_" + ("by_estimator" if col is None else "by_samples"),
                           pd.DataFrame(rows))
        if figures:  # one trained variant (the baseline's, where measured), or the figure is unreadable
            trained = sorted(set(rat["variant"]))
            shown = next((v for v in trained if v == ctx.baseline), trained[0])
            sub = rat[rat["variant"] == shown]
            fig = "gradient_variance_ratios.png"
            rf.ratios(sub.assign(name=[name(r["label"], r["samples"]) for _, r in sub.iterrows()]),
                      f"Encoder gradient variance relative to SGVB B (L = 1) at trained {shown} parameters",
                      ctx.figure(fig))
            lines += [f"![Encoder gradient variance ratios]({FIGURES}/{fig})", "",
                      f"Each point: the ratio pooled over the measured {shown} runs of one latent size; bars: 95% "
                      "bootstrap interval (none where too few runs or minibatches were measured); log scale. The "
                      "other trained variants are in the tables above.", ""]
    else:
        lines += [f"No SGVB B measurement to take ratios against ({DASH}).", ""]
    lines += ["Signal-to-noise ratios (`gradsnr/...`) and a per-model table (`evaluation/gradvar.md`) are in each "
              "measured run.", ""]
    return lines
