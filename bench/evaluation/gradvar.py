"""Gradient variance of every estimator at a run's parameters: what `bench.evaluate --gradient-variance` logs.

For an estimator e, the gradient g = grad (1/M sum_i objective_e(x_i)) of the loss averaged over a minibatch's M
datapoints is a random vector (the noise eps). Drawing the noise R times gives, per network (encoder phi,
decoder theta),

    total variance  V = sum_p Var_r(g_p)            (sum over the coordinates of the parameter group)
    signal-to-noise S = ||E g||^2 / V               (||E g||^2 estimated without bias: ||g_bar||^2 - V / R)

on each of B disjoint minibatches of M test images (the start of the test set, binarised as the run was
trained); the metrics are the means over the B minibatches, the per-minibatch values go to evaluation/gradvar.csv.
The R draws are a batch dimension (bench.evaluation.draws). Every configuration draws its noise from the same
seed, so estimators with the same noise shape see the same eps (A and B then have identical decoder gradients).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tabulate import tabulate
from torch import Tensor, nn

from bench.core.progress import Count
from bench.evaluation import defaults
from bench.evaluation.draws import PARTS, gradient_moments
from variants.registry import Variant

GRADVAR_SEED = 4242
BATCH = 128  # M: images per minibatch, as in training's batch size
BATCHES = 4  # B: disjoint minibatches from the start of the test set
REPEATS = defaults.GRADVAR_REPEATS  # R
IWAE_K = 5  # the iwae_k5 preset; with k = 1 IWAE is exactly SGVB A
BASE = "sgvb_b"  # the ratios' denominator
COLUMNS = ["label", "estimator", "samples", "part", "batch", "variance", "snr"]


def _v(estimator: str, samples: int = 1, **axes: object) -> Variant:
    return Variant(estimator, "", estimator, samples=samples, **axes)  # type: ignore[arg-type]


# (label, variant): the estimators compared at L = 1 (the seed's setting; the IWAE family at k = 5), and the L
# sweep of A and B with IWAE beside them at the same number of samples.
COMPARED: tuple[tuple[str, Variant], ...] = (
    ("sgvb_a", _v("sgvb_a")),
    ("sgvb_b", _v("sgvb_b")),
    ("score_function", _v("score_function")),
    ("score_function_baseline", _v("score_function", baseline=True)),
    ("sgvb_a_stl", _v("sgvb_a_stl")),
    ("iwae", _v("iwae", IWAE_K)),
    ("iwae_dreg", _v("iwae_dreg", IWAE_K)),
    ("iwae_stl", _v("iwae_stl", IWAE_K)),
)
SWEEP_L = (1, 4, 16)
SWEEP: tuple[tuple[str, Variant], ...] = (
    *((f"{e}_L{n}", _v(e, n)) for e in ("sgvb_a", "sgvb_b") for n in SWEEP_L),
    *((f"iwae_L{n}", _v("iwae", n)) for n in SWEEP_L if n > 1),
)


def minibatches(test_x: Tensor, batch: int = BATCH, batches: int = BATCHES) -> list[Tensor]:
    """Up to ``batches`` disjoint minibatches of ``batch`` images from the start of the test set (one smaller
    minibatch if the set holds fewer than ``batch``)."""
    n = max(1, min(batches, len(test_x) // batch))
    return [test_x[i * batch:(i + 1) * batch] for i in range(n)]


def measure(model: nn.Module, test_x: Tensor, repeats: int = REPEATS, seed: int = GRADVAR_SEED,
            sweep: bool = True, batch: int = BATCH, batches: int = BATCHES, progress: bool = False) -> pd.DataFrame:
    """One row per (label, part, minibatch): the contract's columns (COLUMNS). ``progress``: estimator k/N with an
    ETA on stderr."""
    rows = []
    configs = COMPARED + (SWEEP if sweep else ())
    count = Count("gradient variance: estimator", len(configs), progress)
    for label, v in configs:
        for b, x in enumerate(minibatches(test_x, batch, batches)):
            moments = gradient_moments(model, x, v, repeats, seed)
            for part in PARTS:
                s = moments[part].summary()
                rows.append({"label": label, "estimator": v.estimator, "samples": v.draws(), "part": part,
                             "batch": b, "variance": s["variance"], "snr": s["snr"]})
        count.step()
    count.close()
    return pd.DataFrame(rows, columns=COLUMNS)


def gradvar_metrics(table: pd.DataFrame) -> dict[str, float]:
    """gradvar/<part>/<label>, gradsnr/<part>/<label> (means over the minibatches), and
    gradvar_ratio/encoder/<label> = gradvar/encoder/<label> / gradvar/encoder/sgvb_b."""
    means = table.groupby(["label", "part"], sort=False)[["variance", "snr"]].mean()
    out: dict[str, float] = {}
    for (label, part), row in means.iterrows():
        out[f"gradvar/{part}/{label}"] = float(row["variance"])
        out[f"gradsnr/{part}/{label}"] = float(row["snr"])
    base = out.get(f"gradvar/encoder/{BASE}")
    if base:
        for label in means.index.get_level_values("label").unique():
            if label != BASE:
                out[f"gradvar_ratio/encoder/{label}"] = out[f"gradvar/encoder/{label}"] / base
    return out


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per label: means over minibatches, encoder and decoder side by side, the encoder ratio to B."""
    wide = table.pivot_table(index=["label", "estimator", "samples"], columns="part", values=["variance", "snr"],
                             aggfunc="mean", sort=False)
    wide.columns = [f"{part}_{stat}" for stat, part in wide.columns]
    wide = wide.reset_index()
    base = wide.loc[wide["label"] == BASE, "encoder_variance"]
    if len(base):
        wide["encoder_variance_vs_sgvb_b"] = wide["encoder_variance"] / float(base.iloc[0])
    return wide


# The printed table's headers: short enough that it fits 100 columns (the label names the estimator and L or k)
SHORT_HEADERS = {"label": "label", "samples": "L/k", "encoder_variance": "var enc", "decoder_variance": "var dec",
                 "encoder_snr": "SNR enc", "decoder_snr": "SNR dec", "encoder_variance_vs_sgvb_b": "var enc / B"}


def printed_table(table: pd.DataFrame) -> str:
    """summary_table as a GitHub table with SHORT_HEADERS, four significant digits."""
    wide = summary_table(table)
    wide = wide[[c for c in SHORT_HEADERS if c in wide]].rename(columns=SHORT_HEADERS)
    for c in wide.columns[2:]:  # formatted here: tabulate's decimal alignment pads 4-digit numbers to 12 columns
        wide[c] = wide[c].map(lambda v: f"{v:.4g}")
    return tabulate(wide, headers="keys", showindex=False, tablefmt="github", disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(wide.columns) - 1))


def evaluate_gradvar(model: nn.Module, test_x: Tensor, repeats: int, folder: Path, progress: bool = False) -> tuple[
        dict[str, float], dict[str, int], list[Path], str]:
    """What bench.evaluate --gradient-variance logs: (metrics, params, files written in ``folder``, the table)."""
    table = measure(model, test_x, repeats, progress=progress)
    batches = int(table["batch"].max()) + 1
    size = min(BATCH, len(test_x))
    csv, md = folder / "gradvar.csv", folder / "gradvar.md"
    table.to_csv(csv, index=False)
    text = printed_table(table)
    md.write_text(f"Gradient variance over {repeats} noise draws on each of {batches} minibatches of {size} test "
                  f"images (means over the minibatches; total variance, norm-form SNR; var enc / B: the encoder's "
                  f"variance over SGVB B's)\n\n{text}\n")
    params = {"gradvar_repeats": repeats, "gradvar_batches": batches, "gradvar_batch_size": size}
    return gradvar_metrics(table), params, [csv, md], text
