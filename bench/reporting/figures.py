"""seaborn figures for bench.report. Fixed style, fixed colours per variant, no timestamps in the files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

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


def gradvar(df: pd.DataFrame, order: list[str], title: str, path: Path) -> None:
    """Gradient variance by estimator (log scale), encoder and decoder side by side, hue = latent size."""
    df = plain_str(df, "estimator")
    df["z"] = pd.Series([f"z = {z}" for z in df["latent"]], index=df.index, dtype=object)
    zs = [f"z = {z}" for z in sorted(df["latent"].unique())]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, part in zip(axes, ("encoder", "decoder"), strict=True):
        sub = df[df["part"] == part]
        sns.pointplot(data=sub, x="estimator", y="value", order=order, hue="z", hue_order=zs,
                      palette=sns.color_palette("viridis", len(zs)), errorbar="sd", linestyle="none",
                      dodge=0.3 if len(zs) > 1 else False,
                      markersize=6, capsize=0.1, err_kws={"linewidth": 1.2}, ax=ax)
        ax.set_yscale("log")
        ax.set_title(f"{part} gradient")
        ax.set_xlabel("")
        ax.set_ylabel("total variance (log scale)" if part == "encoder" else "")
        ax.tick_params(axis="x", labelrotation=25)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.legend(handles, labels, title="latent", loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)
