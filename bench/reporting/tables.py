"""Every table of the report also as CSV in DIR/tables/, one file per table, with stable column names.

A section registers a table with ``Tables.add(name, frame)``: numbers stay numbers (no "±" strings) where the
table is quantitative. ``COLUMNS`` documents the columns; the report's last section prints it for the tables
that were written, so a reader of the CSVs knows what each column means without reading code.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TABLES = "tables"

# Column meanings, shared by the tables that have them.
COLUMNS = {
    "comparison": "which comparison: estimator_a_vs_b, samples, decoder, latent, iwae_family, stl, user",
    "variant_a": "the reference variant (label) of the pair",
    "variant_b": "the variant compared with it; differences are b − a",
    "latent": "latent size z",
    "metric": "MLflow metric name (final value of each run, or per epoch for trend_differences)",
    "n": "number of runs (summary) or of seed-paired runs (comparisons) that have the metric",
    "mean_a": "mean of variant_a over the paired runs",
    "mean_b": "mean of variant_b over the paired runs",
    "mean_diff": "mean paired difference b − a (same seed)",
    "sd_diff": "standard deviation of the paired differences (n − 1 denominator)",
    "ci_low": "lower end of the 95% interval (t on n − 1 df for differences; percentile bootstrap for ratios)",
    "ci_high": "upper end of the same interval",
    "p_value": "two-sided paired t-test p-value",
    "p_holm": "p_value after Holm's adjustment over every paired comparison of the report",
    "verdict": "what the interval says, in words",
    "seeds": "the seeds of the pairs (or runs), space separated",
    "runs_a": "MLflow run ids of variant_a's side of each pair, ';'-separated, in the order of seeds",
    "runs_b": "MLflow run ids of variant_b's side of each pair, ';'-separated, in the order of seeds",
    "not re-evaluated at epoch": "the run's epochs target, at which the metric was not measured",
    "latest value from epoch": "the step (epoch) of the metric's latest value, left out of the report",
    "variant": "variant label (name, plus key=value for params that vary between its runs)",
    "mean": "mean over runs",
    "sd": "standard deviation over runs (n − 1 denominator)",
    "se": "standard error of the mean, sd / sqrt(n)",
    "epoch": "epoch (MLflow step, from 1)",
    "label": "gradient-variance estimator label of the GRADVAR contract (estimator, or estimator_L<samples>)",
    "part": "encoder or decoder gradient",
    "samples": "samples per datapoint (L, or IWAE's k)",
    "ratio": "total encoder gradient variance of the label over SGVB B's (sgvb_b or sgvb_b_L<same samples>)",
    "runs": "runs (seeds) the ratio pools",
    "batches": "minibatches per run",
    "resampled": "what the bootstrap resampled",
    "seconds": "cumulative epoch_seconds up to that epoch (wall clock on the training machine)",
    "decoder_evaluations": "samples × training images × epochs: the decoder passes of training",
    "sec_per_epoch": "mean epoch_seconds of the runs",
    "reference": "the label the ratio divides by",
    "estimator": "the estimator of the label",
    "decoder": "decoder family (bernoulli, gaussian)",
    "epochs": "epochs logged",
    "test_loss": "final test −ELBO (mean over runs in compute.csv)",
    "test_loss_se": "its standard error over runs",
    "test_nll": "final test NLL (mean over the runs that measured it)",
    "test_loss_at_baseline_seconds": "the variant's mean test −ELBO curve read at the baseline's total seconds",
    "test_loss_at_baseline_evaluations": "the same, at the baseline's total decoder evaluations",
    "run_id": "MLflow run id",
    "git_commit": "the run's mlflow.source.git.commit tag (the code that trained it)",
    "slack_a": "mean test_nll − test_nll_ais (L_K − AIS: the IWAE bound's remaining slack) over variant_a's runs",
    "slack_a_n": "runs of variant_a with both numbers",
    "slack_b": "the same for variant_b",
    "slack_b_n": "runs of variant_b with both numbers",
}


class Tables:
    """The report's tables, by file name (without .csv), in the order they were added."""

    def __init__(self) -> None:
        self.frames: dict[str, pd.DataFrame] = {}

    def add(self, name: str, frame: pd.DataFrame) -> str:
        """Register a table; a name used twice gets a numeric suffix. Returns the file name."""
        base, k = name, 2
        while name in self.frames:
            name, k = f"{base}_{k}", k + 1
        self.frames[name] = frame.reset_index(drop=True)
        return f"{TABLES}/{name}.csv"

    def write(self, out: Path) -> None:
        folder = out / TABLES
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.csv"):  # tables of an earlier report into this folder
            old.unlink()
        for name, frame in self.frames.items():
            frame.to_csv(folder / f"{name}.csv", index=False, lineterminator="\n")  # full precision

    def section(self) -> list[str]:
        """The last section of the report: which CSV holds which table, and what the numeric columns mean."""
        if not self.frames:
            return []
        lines = ["## Tables as CSV", "",
                 f"Every table above is also in `{TABLES}/` (one CSV per table; load with `pandas.read_csv`). "
                 "Quantitative tables keep numbers as numbers; the others hold the cells as shown.", ""]
        for name, frame in self.frames.items():
            lines.append(f"- `{TABLES}/{name}.csv`: " + ", ".join(f"`{c}`" for c in frame.columns))
        used = sorted({c for f in self.frames.values() for c in f.columns if c in COLUMNS})
        lines += ["", "Columns:", ""] + [f"- `{c}`: {COLUMNS[c]}" for c in used] + [""]
        return lines
