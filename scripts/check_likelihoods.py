"""Check every trained run of a store that has test_nll_ais against what must hold (issue 20's "done when"):

    python scripts/check_likelihoods.py STORE [--z 2] [--sweep SWEEP] [--csv OUT.csv]

STORE is a tracking URI (sqlite:////tmp/store/mlflow.db) or the store's folder or database file.

For each training run with ``test_nll_ais`` (analysis runs themselves are skipped; their metrics are read from the
training run's "likelihood" analysis run, tag bench.analysis_of):

- slack = IWAE NLL at K = 1,000 on the same images (``nll_ladder/K1000``) - ``test_nll_ais`` >= 0: AIS is the
  tighter bound. Its standard error is the paired one over the images, from the analysis run's
  likelihood/per_image.csv (log_px_ais and L_K1000 of each image; it holds both estimators' noise and the images'
  spread), or, if that file does not match the logged metrics, the unpaired sqrt(se_AIS^2 + se_L^2).
- ``gap/amortization`` >= 0 and ``gap/approximation`` >= 0, each with its logged standard error over the images.

A check fails when its value is below -z standard errors (z = 2 by default: a one-sided level of 2.3% per check,
so with many runs an occasional false alarm is expected; say which z you used). A run without one of the numbers is
reported as MISSING and fails too: a check that cannot be made is not a pass. Prints a Markdown table (run,
variant, latent, seed, the AIS settings, values +- stderr, verdict) and a summary line; exits 1 if any run fails,
2 if the store cannot be read or no run has test_nll_ais, else 0. Reads the store with MLflow only (not the
report's code), so it checks the numbers independently of how the report shows them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# The store's mlflow-artifacts URIs resolve through vae-bench's artifact repository (an entry point of the bench
# package): importable from a checkout even where the package is not installed, or its install points elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AIS = "test_nll_ais"
LADDER_K = 1000
LADDER = f"nll_ladder/K{LADDER_K}"
GAPS = ("gap/amortization", "gap/approximation")
ANALYSIS = "likelihood"
ANALYSIS_TAG, ANALYSIS_OF_TAG = "bench.analysis", "bench.analysis_of"


def tracking_uri(store: str) -> str:
    if "://" in store:
        return store
    p = Path(store)
    if p.is_dir():
        p = p / "mlflow.db"
    if not p.is_file():
        print(f"check_likelihoods.py: no MLflow store at {store} (give a tracking URI, a folder holding mlflow.db, "
              "or the database file)", file=sys.stderr)
        sys.exit(2)
    return f"sqlite:///{p.resolve()}"


@dataclass
class Check:
    name: str
    value: float
    stderr: float

    def ok(self, z: float) -> bool:
        return self.value >= -z * self.stderr if math.isfinite(self.stderr) else self.value >= 0


@dataclass
class Row:
    run_id: str
    run: str
    variant: str
    latent: str
    seed: str
    settings: str
    ais: float
    ais_se: float
    checks: list[Check] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    paired: bool = False
    unreadable: str = ""  # why its per-image table, there, could not be read (the slack's error is then unpaired)
    ladder: float = math.nan
    ladder_se: float = math.nan

    def verdict(self, z: float) -> str:
        bad = [f"{c.name} < 0" for c in self.checks if not c.ok(z)]
        out = [f"VIOLATION: {', '.join(bad)}"] if bad else []
        if self.missing:
            out.append(f"MISSING: {', '.join(self.missing)}")
        return "; ".join(out) or "ok"


def _last(tags: dict[str, str], params: dict[str, str], name: str, step: int) -> str:
    """The setting's value of the latest evaluation at the step (its tag lists each value used, in order)."""
    tag = tags.get(f"bench.{name}.step{step}")
    return tag.split(",")[-1] if tag else params.get(name, "?")


def _per_image_slack(client, child_id: str, ais: float, ladder: float) -> tuple[float, float] | None:
    """(mean, stderr over the images) of log_px_ais - L_K1000 from per_image.csv, if it is the same evaluation as
    the logged metrics (its means reproduce them); else None. Raises where the table is there but cannot be read
    (the artifact store unreachable, a damaged file)."""
    listed = {a.path for a in client.list_artifacts(child_id, "likelihood")}
    if "likelihood/per_image.csv" not in listed:  # an older evaluation, or one stopped before it
        return None
    with tempfile.TemporaryDirectory(prefix="check-likelihoods-") as tmp:
        t = pd.read_csv(client.download_artifacts(child_id, "likelihood/per_image.csv", tmp))
    col = f"L_K{LADDER_K}"
    if col not in t or "log_px_ais" not in t or len(t) < 2:
        return None
    if abs(-t["log_px_ais"].mean() - ais) > 1e-6 or abs(-t[col].mean() - ladder) > 1e-6:
        return None
    d = t["log_px_ais"] - t[col]
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def collect(uri: str, sweep: str | None) -> list[Row]:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run's table otherwise
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = []
    token = None
    while True:  # every run of every experiment, page by page
        page = client.search_runs(exps, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    children = {r.data.tags[ANALYSIS_OF_TAG]: r for r in sorted(runs, key=lambda r: r.info.start_time)[::-1]
                if r.data.tags.get(ANALYSIS_TAG) == ANALYSIS and ANALYSIS_OF_TAG in r.data.tags}  # the oldest wins
    rows = []
    for r in runs:
        tags, params, m = r.data.tags, r.data.params, r.data.metrics
        if ANALYSIS_TAG in tags or AIS not in m:
            continue
        if sweep is not None and tags.get("bench.sweep") != sweep and tags.get(f"bench.in_sweep.{sweep}") != "true":
            continue
        step = client.get_metric_history(r.info.run_id, AIS)[-1].step
        settings = (f"T={_last(tags, params, 'ais_steps', step)} C={_last(tags, params, 'ais_chains', step)} "
                    f"{_last(tags, params, 'ais_start', step)} N={_last(tags, params, 'ais_images', step)}")
        row = Row(r.info.run_id, r.info.run_name or r.info.run_id, params.get("variant", "?"),
                  params.get("latent", "?"), params.get("seed", "?"), settings, m[AIS],
                  m.get(f"{AIS}_stderr", math.nan))
        child = children.get(r.info.run_id)
        cm = child.data.metrics if child is not None else {}
        if LADDER in cm:
            row.ladder, row.ladder_se = cm[LADDER], cm.get(f"{LADDER}_stderr", math.nan)
            try:
                paired = _per_image_slack(client, child.info.run_id, row.ais, row.ladder)
            except Exception as e:
                paired, row.unreadable = None, str(e).splitlines()[0] if str(e) else type(e).__name__
            if paired is not None:
                row.paired = True
                row.checks.append(Check(f"L_{LADDER_K} - AIS", *paired))
            else:
                row.checks.append(Check(f"L_{LADDER_K} - AIS", row.ladder - row.ais,
                                        math.hypot(row.ais_se, row.ladder_se)))
        else:
            row.missing.append(LADDER)
        for g in GAPS:
            if g in cm:
                row.checks.append(Check(g, cm[g], cm.get(f"{g}_stderr", math.nan)))
            else:
                row.missing.append(g)
        rows.append(row)
    return sorted(rows, key=lambda r: (r.variant, int(r.latent) if r.latent.isdigit() else 0, r.seed, r.run_id))


def _pm(v: float, se: float) -> str:
    if not math.isfinite(v):
        return "—"
    return f"{v:.2f} ± {se:.2f}" if math.isfinite(se) else f"{v:.2f}"


def table(rows: list[Row], z: float) -> tuple[str, pd.DataFrame]:
    md = ["| run | variant | latent | seed | AIS settings | AIS NLL | IWAE NLL K=1000 | slack L_1000 − AIS | "
          "amortization gap | approximation gap | verdict |", "|" + " --- |" * 11]
    recs = []
    for r in rows:
        c = {ch.name: ch for ch in r.checks}
        slack = c.get(f"L_{LADDER_K} - AIS")
        cells = [_pm(r.ais, r.ais_se), _pm(r.ladder, r.ladder_se),
                 (_pm(slack.value, slack.stderr) + ("" if r.paired else " (unpaired)")) if slack else "—"]
        cells += [_pm(c[g].value, c[g].stderr) if g in c else "—" for g in GAPS]
        md.append(f"| {r.run} | {r.variant} | {r.latent} | {r.seed} | {r.settings} | " + " | ".join(cells)
                  + f" | {r.verdict(z)} |")
        rec = {"run_id": r.run_id, "run": r.run, "variant": r.variant, "latent": r.latent, "seed": r.seed,
               "ais_settings": r.settings, "test_nll_ais": r.ais, "test_nll_ais_stderr": r.ais_se,
               "nll_k1000": r.ladder, "nll_k1000_stderr": r.ladder_se, "slack_paired": r.paired}
        for name, key in ((f"L_{LADDER_K} - AIS", "slack"), *((g, g.split("/")[1] + "_gap") for g in GAPS)):
            rec[key] = c[name].value if name in c else math.nan
            rec[f"{key}_stderr"] = c[name].stderr if name in c else math.nan
        rec["z"], rec["verdict"] = z, r.verdict(z)
        recs.append(rec)
    return "\n".join(md), pd.DataFrame(recs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", help="tracking URI, or the store's folder or mlflow.db")
    p.add_argument("--z", type=float, default=2.0, help="standard errors a value may fall below 0 (default 2)")
    p.add_argument("--sweep", help="only the runs of this sweep (tag bench.sweep or bench.in_sweep.<sweep>)")
    p.add_argument("--csv", type=Path, help="also write the table as CSV here")
    args = p.parse_args(argv)
    uri = tracking_uri(args.store)
    try:
        rows = collect(uri, args.sweep)
    except Exception as e:  # an unreadable store: one line
        print(f"check_likelihoods.py: cannot read {uri}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    if not rows:
        print(f"check_likelihoods.py: no training run in {uri} has {AIS}" + (f" (sweep {args.sweep})" if args.sweep
                                                                              else ""), file=sys.stderr)
        return 2
    md, df = table(rows, args.z)
    print(md)
    unreadable = [r.unreadable for r in rows if r.unreadable]
    if unreadable:
        print(f"check_likelihoods.py: {len(unreadable)} per-image tables could not be read, so their slack's standard "
              f"error is unpaired: {unreadable[0]}", file=sys.stderr)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.csv, index=False)
    bad = [r for r in rows if r.verdict(args.z) != "ok"]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} runs pass (z = {args.z:g}: AIS NLL <= IWAE NLL at K = {LADDER_K} "
          "on the same images, and both gaps >= 0, within z standard errors)")
    for r in bad:
        print(f"FAIL {r.run} ({r.run_id}): {r.verdict(args.z)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
