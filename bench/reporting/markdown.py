"""Markdown and number formatting for the report: table cells (mean ± sd over seeds), escaping, names."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

DASH = "—"
METRIC_NAMES = {"train_loss": "train −ELBO", "test_loss": "test −ELBO", "test_recon": "test reconstruction",
                "test_kld": "test KL", "test_nll": "test NLL", "test_mse": "test MSE",
                "active_units": "active units", "sec_per_epoch": "s / epoch", "train_recon": "train reconstruction",
                "train_kld": "train KL"}
FORMATS = {"test_mse": ".4f", "active_units": ".1f", "sec_per_epoch": ".2f"}


def fmt(metric: str) -> str:
    if metric.startswith("gradvar_"):
        return ".3g"
    return FORMATS.get(metric, ".2f")


def cell(values: pd.Series, spec: str, total: int | None = None, spread: str = "sd") -> str:
    """mean ± sd (spread="se": ± standard error) over the runs that have the value; '(k of n runs)' when some lack
    it; — when none has it."""
    v = values.dropna()
    if v.empty:
        return DASH
    text = format(v.mean(), spec)
    if len(v) > 1:
        sd = v.std(ddof=1)
        text += f" ± {format(sd / len(v) ** 0.5 if spread == 'se' else sd, spec)}"
    if total is not None and len(v) < total:
        text += f" ({len(v)} of {total} runs)"
    return text


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    df = pd.DataFrame(rows).astype(object).fillna("").map(esc)
    return df.to_markdown(index=False, disable_numparse=True)


def esc(text: Any) -> str:
    """Safe inside a Markdown table cell (idempotent)."""
    return re.sub(r"(?<!\\)\|", r"\\|", re.sub(r"\s+", " ", str(text))).strip()


def join_ints(values: Any) -> str:
    return ", ".join(str(v) for v in sorted({int(v) for v in values if pd.notna(v)}))


def join_str(values: pd.Series) -> str:
    return ", ".join(sorted({str(v) for v in values.dropna()}))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def num(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def signed(x: float, spec: str) -> str:
    text = format(x, "+" + spec)
    return format(0.0, spec) if float(text) == 0 else text


def ratio(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def short(value: Any) -> str:
    x = num(value)
    if x is None or str(value).isdigit():
        return str(value)
    return f"{x:.3g}"
