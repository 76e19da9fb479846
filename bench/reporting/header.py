"""The report's opening: its header (date, the code commits that trained the runs, counts, machine) and the
summary table (mean ± standard error over seeds, with n)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

import pandas as pd

from bench.reporting.markdown import DASH, METRIC_NAMES, cell, fmt, join_ints, num, table
from bench.reporting.sections import REPO, Ctx, family, recon_name
from bench.reporting.stats import mean_se


def git_commit(out: Path | None = None) -> str:
    """The checkout's commit, and whether code differs from it. The report's own folder does not count:
    rewriting a committed report (its figures are cleared first) is not a change to the code."""
    exclude = []
    if out is not None and out.resolve().is_relative_to(REPO):
        exclude = [f":(exclude){out.resolve().relative_to(REPO).as_posix()}"]
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *exclude], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"`{sha}`" + (" with uncommitted changes" if dirty else "")


def constraints_digest(path: Path | None = None) -> str:
    """The lock file the environment was meant to be installed through (constraints.txt, README "Tested
    installs"): its sha256 (12 hex digits), and whether the installed versions are the pinned ones."""
    from importlib import metadata

    path = path or REPO / "constraints.txt"
    try:
        text = path.read_text()
    except OSError:
        return f"no {path.name}"
    off = []
    for line in text.splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if not sep:
            continue
        try:
            if metadata.version(name) != version:
                off.append(name)
        except metadata.PackageNotFoundError:
            off.append(name)
    state = "installed as pinned" if not off else f"{len(off)} installed otherwise ({', '.join(off[:3])}" + (
        ", ...)" if len(off) > 3 else ")")
    return f"{path.name} sha256 `{hashlib.sha256(text.encode()).hexdigest()[:12]}`, {state}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mlflow
    import torch

    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical cores; "
            f"Python {platform.python_version()}, torch {torch.__version__}, mlflow {mlflow.__version__}; "
            f"{constraints_digest()}")


def provenance(runs: pd.DataFrame) -> str:
    """The commits that trained these runs, from their own tags (GIT_COMMIT_TAG, GIT_DIRTY_TAG), with counts;
    runs without the tag are said to lack it."""
    if runs.empty:
        return "no runs"
    commits = runs["git_commit"] if "git_commit" in runs else pd.Series([None] * len(runs), index=runs.index)
    dirty = runs["git_dirty"] if "git_dirty" in runs else pd.Series([None] * len(runs), index=runs.index)
    parts = []
    for sha, g in runs.groupby(commits.fillna(""), sort=True):
        if not sha:
            continue
        d = dirty[g.index].astype(str).str.lower()
        n_dirty = int((d == "true").sum())
        text = f"`{str(sha)[:12]}` ({len(g)} run{'s' if len(g) != 1 else ''}"
        text += f", {n_dirty} with uncommitted changes)" if n_dirty else ")"
        parts.append(text)
    missing = int(commits.isna().sum())
    out = ("runs trained with vae-bench commit" + ("s " if len(parts) > 1 else " ") + ", ".join(parts)) if parts \
        else "the runs carry no commit tag, so the code that trained them is unknown"
    if parts and missing:
        out += f"; {missing} run{'s' if missing != 1 else ''} carry no commit tag (trained before runs were tagged)"
    return out


def header(ctx: Ctx, date: str) -> list[str]:
    d = ctx.data
    runs = d.runs
    main = d.main
    statuses = main["status"].value_counts()
    counts = ", ".join(f"{statuses.get(s, 0)} {s.lower()}" for s in ("FINISHED", "FAILED", "KILLED"))
    other = int(len(main) - statuses.reindex(["FINISHED", "FAILED", "KILLED"]).fillna(0).sum())
    if other:
        counts += f", {other} unfinished"
    fin = ctx.fin
    epochs = sorted(set(fin["epochs_logged"])) or [0]
    epoch_text = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"
    what = f"sweep `{d.sweep}`" if d.sweep else f"experiment `{d.experiments[0]}`"
    title = f"# vae-bench report: {what}"
    where = f"sweep `{d.sweep}` in experiment {', '.join(f'`{e}`' for e in d.experiments)}" if d.sweep \
        else f"experiment `{d.experiments[0]}`"
    n_studies = int((runs["role"] == "study").sum())
    n_trials = int((runs["role"] == "trial").sum())
    tuning = (f"{n_studies} Optuna stud{'y' if n_studies == 1 else 'ies'} of {n_trials} trial runs "
              "(see *Tuning studies*)") if n_studies else ""
    shown = fin if len(fin) else runs
    devices = sorted(set(shown.get("device", pd.Series(dtype=object)).dropna()) |
                     set(shown.get("precision", pd.Series(dtype=object)).dropna()))
    if len(fin):
        count_line = (f"{len(main)} runs: {counts}. Averaged: {len(fin)} finished runs of {fin['label'].nunique()} "
                      f"variants × latent sizes {{{join_ints(fin['latent'])}}} × seeds {{{join_ints(fin['seed'])}}} "
                      f"({fin['seed'].nunique()} seeds); {epoch_text} epoch{'' if epoch_text == '1' else 's'} each"
                      + (f"; plus {tuning}" if tuning else "") + ".")
    else:
        count_line = f"no runs of a comparison here; {tuning or 'no tuning studies'}."
    lines = [
        title, "",
        f"- **Date:** {date}",
        f"- **Code:** {provenance(fin if len(fin) else main)}; this report made with commit {git_commit(ctx.out)}",
        f"- **Runs:** {where}, tracking store `{d.uri}`",
        f"- **Counts:** {count_line}",
        f"- **Machine:** report made on {machine()}; runs trained on {', '.join(devices) or 'unknown'}.",
        "",
        "All losses are in nats per image and lower is better: −ELBO = reconstruction + KL, the negative of the "
        "evidence lower bound. Test metrics are computed on the 10,000 MNIST test images in the same way for every "
        "variant (analytic KL, one reparameterised sample from a fixed noise seed), so any two runs compare on "
        "equal terms. Summary cells read *mean ± standard error of the mean over seeds* (n, the number of runs, in "
        "its own column); a dash means not measured.",
        "",
    ]
    return lines


def summary(ctx: Ctx) -> list[str]:
    fin = ctx.fin
    lines = ["## Summary", ""]
    families = sorted(fin["decoder"].map(family).unique()) if "decoder" in fin else ["unknown"]
    for fam in families:
        runs = fin[fin["decoder"].map(family) == fam] if "decoder" in fin else fin
        cols = [("train_loss", "train −ELBO"), ("test_loss", "test −ELBO"),
                ("test_recon", f"test {recon_name(fam)}"), ("test_kld", "test KL")]
        cols += [(m, METRIC_NAMES[m]) for m in ("test_nll", "active_units") if ctx.has(m, runs)]
        cols += [("sec_per_epoch", "s / epoch")]
        rows, csv = [], []
        for (label, latent), g in runs.groupby(["label", "latent"], sort=True, dropna=False):
            epochs = sorted(set(g["epochs_logged"]))
            row = {"variant": label, "z": latent, "n": str(len(g)), "seeds": join_ints(g["seed"]),
                   "epochs": str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"}
            for m, name in cols:
                row[name] = cell(g[m], fmt(m), len(g), spread="se") if m in g else DASH
                if m in g:
                    n, mean, se = mean_se(g[m])
                    csv.append({"variant": label, "latent": latent, "decoder": fam, "metric": m, "n": n,
                                "mean": mean, "sd": g[m].std(ddof=1) if n > 1 else float("nan"), "se": se,
                                "seeds": " ".join(str(int(x)) for x in sorted(g.loc[g[m].notna(), "seed"].dropna()))})
            rows.append(row)
        ctx.tables.add(f"summary_{fam}", pd.DataFrame(csv))
        if len(families) > 1:
            lines += [f"### {fam.capitalize()} decoder", ""]
        if fam == "gaussian":
            lines += ["The Gaussian decoder's reconstruction term is a density (−log N(x; f(z), cI) on grey levels), "
                      "so its −ELBO is not on the Bernoulli scale; compare decoders on test MSE "
                      "(*Bernoulli vs Gaussian* below).", ""]
        lines += [table(rows), ""]
    if ctx.has("test_nll"):
        nll = sorted({int(num(v) or 0) for v in ctx.fin.get("nll_samples", pd.Series(dtype=object)).dropna()})
        k = f" with {', '.join(map(str, nll))} importance samples" if nll else ""
        lines += [f"Test NLL is the importance-sampled −log p(x){k}, an upper bound tighter than −ELBO.", ""]
    if ctx.has("active_units"):
        lines += ["Active units: latent dimensions whose encoder mean varies over the test set by more than 0.01 "
                  "(Burda et al.'s rule).", ""]
    lines += ["*s / epoch*: wall-clock seconds per epoch, training plus test evaluation, images and checkpoint, "
              "averaged over the epochs of each run, as measured on the machine that trained it: a description of "
              "these runs, not a comparison (see *Compute-matched views*).", ""]
    return lines


