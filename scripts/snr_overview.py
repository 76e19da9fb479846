"""The verdict table of reports/snr/report.md, from the studies' slopes.

    python scripts/snr_overview.py reports/snr            # prints the table (per-parameter SNR)

Each study folder (written by ``bench.snr --out``) holds slopes.csv. A verdict reads the 95% interval against the
papers' predicted sign: "direction reproduced" where it excludes 0 on the predicted side, "opposite direction" where
it excludes 0 on the other, "not resolved" where it spans 0. ``--rewrite`` also rewrites each study's snr.md table
and slopes.csv's prediction column with the current predictions (bench.evaluation.snr.prediction), keeping the
first three lines of snr.md (title, settings).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench.evaluation import snr

# The sign each law predicts for the slope of log SNR against log K.
SIGNS = {("iwae", "encoder"): -1, ("iwae", "decoder"): 1, ("iwae_dreg", "encoder"): 1, ("iwae_dreg", "decoder"): 1,
         ("iwae_stl", "encoder"): 1, ("iwae_stl", "decoder"): 1, ("elbo", "encoder"): 1, ("elbo", "decoder"): 1}


def verdict(row: pd.Series) -> str:
    sign = SIGNS.get((row["estimator"], row["part"]))
    if sign is None:
        return "no prediction"
    if row["ci_low"] <= 0 <= row["ci_high"]:
        return "not resolved (interval spans 0)"
    return "direction reproduced" if (row["slope"] > 0) == (sign > 0) else "opposite direction"


def rewrite(study: Path, fits: pd.DataFrame) -> None:
    fits = fits.assign(prediction=[snr.prediction(r.estimator, r.part, r.form) for r in fits.itertuples()])
    fits.to_csv(study / "slopes.csv", index=False)
    md = study / "snr.md"
    if not md.exists():
        return
    lines = md.read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("|"))  # the table's last row
    table = snr.markdown(fits, "", "").splitlines()[4:]  # past the title and the settings
    md.write_text("\n".join(lines[:4] + table + lines[last + 1:]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rewrite", action="store_true", help="rewrite each study's snr.md table")
    args = parser.parse_args()
    print("| study | estimator | network | K range | slope [95% interval] | papers | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for slopes in sorted(args.folder.glob("*/slopes.csv")):
        fits = pd.read_csv(slopes)
        if args.rewrite:
            rewrite(slopes.parent, fits)
        for _, r in fits[fits["form"] == "snr_param"].iterrows():
            sign = SIGNS.get((r["estimator"], r["part"]))
            print(f"| {slopes.parent.name} | {r['estimator']} | {r['part']} | {r['k_min']}-{r['k_max']} | "
                  f"{r['slope']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | "
                  f"{'-' if sign == -1 else '+' if sign == 1 else '?'} | {verdict(r)} |")


if __name__ == "__main__":
    main()
