"""seaborn figures for bench.report. Fixed style, fixed colours per variant, no timestamps in the files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from bench.reporting.markdown import METRIC_NAMES  # noqa: E402

DPI = 110
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: the same data gives the same bytes


def setup() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "axes.titleweight": "bold",
                         "legend.frameon": False, "svg.hashsalt": "vae-bench"})


def palette(labels: list[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per variant label, the same in every figure of a report."""
    colours = sns.color_palette("colorblind" if len(labels) <= 10 else "husl", len(labels))
    return dict(zip(labels, colours, strict=True))


def legend_text(label: str) -> str:
    """A legend entry at most ~44 characters wide: a label that names many params wraps onto more lines."""
    return textwrap.fill(label, 44, subsequent_indent="  ", break_on_hyphens=False)


def legend_entries(colours: dict[str, tuple], labels: list[str]) -> tuple[list[plt.Line2D], list[str]]:
    """Handles and wrapped texts for a figure legend of these variant labels."""
    return ([plt.Line2D([], [], color=colours[k], marker="o", linewidth=1.5) for k in labels],
            [legend_text(k) for k in labels])


def plain_str(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    """seaborn 0.13 can mis-order hue levels of pandas' string dtype: give it Python str objects."""
    df = df.copy()
    for c in cols:
        df[c] = pd.Series([str(v) for v in df[c]], index=df.index, dtype=object)
    return df


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)


def trends(long: pd.DataFrame, rows: list[tuple[str, str]], colours: dict[str, tuple], title: str,
           path: Path) -> None:
    """Lines of mean over seeds with a +-1 sd band, one row per quantity, one column per latent size.

    long: columns label, latent, seed, epoch, quantity, value. rows: (quantity, y-axis label) in order.
    """
    df = plain_str(long, "label", "quantity")
    df["latent"] = [f"z = {z}" for z in df["latent"]]
    cols = [f"z = {z}" for z in sorted(long["latent"].unique())]
    hue_order = [h for h in colours if h in set(df["label"])]
    g = sns.relplot(
        data=df, kind="line", x="epoch", y="value", hue="label", hue_order=hue_order, palette=colours,
        row="quantity", row_order=[q for q, _ in rows], col="latent", col_order=cols,
        errorbar="sd", marker="o", markersize=4, linewidth=1.6, height=2.5, aspect=1.35, legend=False,
        facet_kws={"sharey": "row", "sharex": True, "margin_titles": False},
    )
    names = dict(rows)
    for (i, j), ax in _grid(g):
        ax.set_title(f"latent {g.col_names[j]}" if i == 0 else "", fontsize=10)
        ax.set_ylabel(f"{names[g.row_names[i]]} (nats)" if j == 0 else "")
        ax.set_xlabel("epoch" if i == len(g.row_names) - 1 else "")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    g.figure.suptitle(title, fontsize=12, fontweight="bold")
    g.figure.tight_layout()  # before the legend, which sits outside the panels (savefig keeps it in the picture)
    g.figure.legend(*legend_entries(colours, hue_order), title="variant", loc="center left",
                    bbox_to_anchor=(1.0, 0.5), frameon=False)
    _save(g.figure, path)


def _grid(g: sns.FacetGrid) -> list[tuple[tuple[int, int], plt.Axes]]:
    return [((i, j), g.axes[i, j]) for i in range(g.axes.shape[0]) for j in range(g.axes.shape[1])]


def finals(final: pd.DataFrame, panels: list[tuple[str, str, list[str]]], colours: dict[str, tuple], title: str,
           path: Path) -> None:
    """Final values against latent size, mean +- sd over seeds: one panel per (metric, y label, labels)."""
    latents = sorted(final["latent"].dropna().unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (metric, ylabel, labels) in zip(axes[0], panels, strict=True):
        df = plain_str(final[final["label"].isin(labels)], "label")
        df["z"] = pd.Series([str(z) for z in df["latent"]], index=df.index, dtype=object)
        order = [h for h in colours if h in set(labels)]
        sns.pointplot(data=df, x="z", y=metric, order=[str(z) for z in latents], hue="label", hue_order=order,
                      palette=colours, errorbar="sd", dodge=0.25 if len(order) > 1 else False, capsize=0.08,
                      markersize=5, linewidth=1.5, err_kws={"linewidth": 1.2}, ax=ax)
        ax.set_xlabel("latent size z")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.split(" (")[0])
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.legend(*legend_entries(colours, list(colours)), title="variant", loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


def anchor_curve(long: pd.DataFrame, rows: list[tuple[str, str, dict[int, float], str]], title: str,
                 path: Path) -> None:
    """Our runs of the seed's configuration (mean +- sd over seeds) with reference points.

    long: epoch, seed, quantity, value. rows: (quantity, panel title, {epoch: reference value}, reference name).
    """
    markers = {}  # reference name -> (marker, colour), in order of appearance
    for *_, ref_name in rows:
        markers.setdefault(ref_name, (("X", "black"), ("D", "#c0392b"))[len(markers) % 2])
    fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 3.2), squeeze=False)
    for ax, (quantity, name, refs, ref_name) in zip(axes[0], rows, strict=True):
        df = long[long["quantity"] == quantity]
        sns.lineplot(data=df, x="epoch", y="value", errorbar="sd", marker="o", markersize=4, ax=ax,
                     color=sns.color_palette("colorblind")[0], label="this suite (mean ± sd over seeds)")
        if refs:
            marker, colour = markers[ref_name]
            ax.scatter(list(refs), list(refs.values()), marker=marker, s=60, color=colour, zorder=5, label=ref_name)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image" if ax is axes[0][0] else "")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.get_legend().remove()
    handles: dict[str, object] = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=len(handles))
    _save(fig, path)


def _interval_axes(n: int, width: float, height: float, ncols: int = 2) -> tuple[plt.Figure, list[plt.Axes]]:
    """n panels, at most ncols a row (a row of four is too wide to read); spare panels hidden."""
    cols = min(n, ncols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, max(2.0, height) * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def forest(df: pd.DataFrame, title: str, path: Path) -> None:
    """Paired differences b - a with their intervals, one panel per value of ``panel`` (each on its own scale; default
    the metric), a line at 0."""
    key = "panel" if "panel" in df else "metric"
    metrics = list(dict.fromkeys(df[key]))
    tallest = max(int((df[key] == m).sum()) for m in metrics)
    fig, axes = _interval_axes(len(metrics), 5.2, 0.9 + 0.38 * tallest)
    for ax, m in zip(axes, metrics, strict=True):
        sub = df[df[key] == m].iloc[::-1]
        y = range(len(sub))
        labels = [legend_text(f"{r.variant_b} − {r.variant_a}, z={r.latent}") for r in sub.itertuples()]
        err = [sub["mean_diff"] - sub["ci_low"], sub["ci_high"] - sub["mean_diff"]]
        ax.errorbar(sub["mean_diff"], list(y), xerr=err, fmt="o", color="#1f4e79", capsize=3, markersize=4,
                    linewidth=1.2)
        ax.axvline(0, color="#c0392b", linewidth=1, linestyle="--")
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.set_title(METRIC_NAMES.get(m, m), fontsize=10)  # the tables' names: test −ELBO, not test_loss
        ax.set_xlabel("B − A (95% t-interval)")
    fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.tight_layout()
    _save(fig, path)


def ratios(df: pd.DataFrame, title: str, path: Path) -> None:
    """Variance ratios with bootstrap intervals (log scale), one row per (trained variant, latent, estimator)."""
    df = df.iloc[::-1]
    fig, axes = _interval_axes(1, 7.0, 0.9 + 0.3 * len(df))
    ax = axes[0]
    y = list(range(len(df)))
    lo = (df["ratio"] - df["ci_low"]).fillna(0).clip(lower=0)
    hi = (df["ci_high"] - df["ratio"]).fillna(0).clip(lower=0)
    ax.errorbar(df["ratio"], y, xerr=[lo, hi], fmt="o", color="#1f4e79", capsize=3, markersize=4)
    ax.axvline(1, color="#c0392b", linewidth=1, linestyle="--")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, [f"{r.name} (trained {r.variant}, z={r.latent})" for r in df.itertuples()], fontsize=8)
    ax.set_xlabel("encoder gradient variance / SGVB B's (log scale)")
    fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.tight_layout()
    _save(fig, path)


def diff_curves(df: pd.DataFrame, colours: dict[str, tuple], title: str, path: Path) -> None:
    """Per-epoch paired differences from a baseline with their 95% bands, one panel per latent size."""
    latents = sorted(df["latent"].unique())
    fig, axes = plt.subplots(1, len(latents), figsize=(4.2 * len(latents), 3.4), squeeze=False, sharey=False)
    for ax, z in zip(axes[0], latents, strict=True):
        for label, colour in colours.items():
            sub = df[(df["latent"] == z) & (df["variant_b"] == label)].sort_values("epoch")
            if sub.empty:
                continue
            ax.plot(sub["epoch"], sub["mean_diff"], marker="o", markersize=3, color=colour, linewidth=1.5)
            ax.fill_between(sub["epoch"], sub["ci_low"], sub["ci_high"], color=colour, alpha=0.2, linewidth=0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"latent z = {z}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test −ELBO difference (nats)" if z == latents[0] else "")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.legend(*legend_entries(colours, list(colours)), title="variant", loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


def compute(df: pd.DataFrame, colours: dict[str, tuple], title: str, path: Path) -> None:
    """Mean test -ELBO per epoch against mean cumulative seconds and decoder evaluations; rows = latent sizes."""
    latents = sorted(df["latent"].unique())
    fig, axes = plt.subplots(len(latents), 2, figsize=(10, 2.9 * len(latents)), squeeze=False)
    means = df.groupby(["label", "latent", "epoch"])[["seconds", "decoder_evaluations", "value"]].mean()
    for i, z in enumerate(latents):
        for j, x in enumerate(("seconds", "decoder_evaluations")):
            ax = axes[i][j]
            for label, colour in colours.items():
                if (label, z) in means.index.droplevel("epoch"):
                    c = means.loc[(label, z)]
                    ax.plot(c[x], c["value"], marker="o", markersize=3, color=colour, linewidth=1.4)
            if x == "decoder_evaluations":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log axis
            ax.set_xlabel("cumulative training seconds" if j == 0 else "decoder evaluations (log scale)")
            ax.set_ylabel(f"test −ELBO, z = {z}" if j == 0 else "")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.legend(*legend_entries(colours, list(colours)), title="variant", loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)
