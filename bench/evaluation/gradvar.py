"""Gradient variance of every estimator, at fixed parameters and one fixed minibatch.

For an estimator e, the gradient g = grad (1/M sum_i objective_e(x_i)) of the loss averaged over the
minibatch's M datapoints is a random vector (the noise eps). Drawing the noise R times gives

    total variance  V = sum_p Var_r(g_p)            (sum over the coordinates of the parameter group)
    signal-to-noise S = ||E g||^2 / V               (||E g||^2 estimated without bias: ||g_bar||^2 - V / R)

separately for the encoder (phi) and the decoder (theta). S is below 1/R's resolution when it comes out
near 0 or slightly negative. Every configuration draws its noise from the same seed, so estimators
with the same noise shape see the same eps (A and B then have identical decoder gradients).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from bench.core.devices import accumulation_dtype
from variants.registry import Variant

GRADVAR_SEED = 4242
BATCH = 128  # the minibatch: the first BATCH test images, as in training's batch size
REPEATS = 100
IWAE_K = 5  # the iwae_k5 preset; with k = 1 IWAE is exactly SGVB A

# (label, variant): the estimators compared at L = 1 (the seed's setting), and the L sweep of A and B.
COMPARED: tuple[tuple[str, Variant], ...] = (
    ("sgvb_a", Variant("sgvb_a", "", "sgvb_a")),
    ("sgvb_b", Variant("sgvb_b", "", "sgvb_b")),
    ("score_function", Variant("score_function", "", "score_function")),
    ("score_function_baseline", Variant("score_function_baseline", "", "score_function", baseline=True)),
    ("iwae", Variant("iwae", "", "iwae", samples=IWAE_K)),
)
SWEEP_L = (1, 4, 16)
SWEEP: tuple[tuple[str, Variant], ...] = tuple(
    (f"{e}_L{n}", Variant(e, "", e, samples=n)) for e in ("sgvb_a", "sgvb_b") for n in SWEEP_L)


@dataclass(frozen=True)
class GradStats:
    estimator: str
    samples: int
    encoder_var: float
    decoder_var: float
    encoder_snr: float
    decoder_snr: float


class _Moments:
    """Running sum and sum of squares of a gradient vector, in float64 (float32 on mps)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.s = torch.zeros(n, dtype=accumulation_dtype(device), device=device)
        self.s2 = torch.zeros_like(self.s)

    def add(self, g: Tensor) -> None:
        g = g.to(self.s.dtype)
        self.s += g
        self.s2 += g * g

    def total_variance_and_snr(self, r: int) -> tuple[float, float]:
        mean = self.s / r
        var = float(((self.s2 - r * mean * mean) / (r - 1)).clamp_min(0).sum())
        signal = float(mean.pow(2).sum()) - var / r
        return var, (signal / var if var > 0 else float("inf"))


def _flat_grad(params: list[nn.Parameter]) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def gradient_stats(model: nn.Module, x: Tensor, variant: Variant, repeats: int = REPEATS,
                   seed: int = GRADVAR_SEED, label: str | None = None) -> GradStats:
    """Encoder and decoder total variance and SNR of ``variant``'s gradient over ``repeats`` noise draws."""
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 to measure a variance, got {repeats}")
    enc, dec = model.encoder_parameters(), model.decoder_parameters()
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    m_enc = _Moments(sum(p.numel() for p in enc), x.device)
    m_dec = _Moments(sum(p.numel() for p in dec), x.device)
    with torch.enable_grad():
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            variant.estimate(model, x, gen).objective.mean().backward()
            m_enc.add(_flat_grad(enc))
            m_dec.add(_flat_grad(dec))
    model.zero_grad(set_to_none=True)
    (ev, es), (dv, ds) = m_enc.total_variance_and_snr(repeats), m_dec.total_variance_and_snr(repeats)
    return GradStats(label or variant.name, variant.samples, ev, dv, es, ds)


def measure_all(model: nn.Module, x: Tensor, repeats: int = REPEATS, seed: int = GRADVAR_SEED,
                sweep: bool = True) -> list[GradStats]:
    """Every compared estimator, then (``sweep``) A and B at L in SWEEP_L."""
    configs = COMPARED + (SWEEP if sweep else ())
    return [gradient_stats(model, x, v, repeats, seed, label) for label, v in configs]


def gradvar_metrics(stats: list[GradStats]) -> dict[str, float]:
    """gradvar_{encoder,decoder}_<label>, gradsnr_{encoder,decoder}_<label>, and the encoder ratios to B."""
    out: dict[str, float] = {}
    for s in stats:
        for part in ("encoder", "decoder"):
            out[f"gradvar_{part}_{s.estimator}"] = getattr(s, f"{part}_var")
            out[f"gradsnr_{part}_{s.estimator}"] = getattr(s, f"{part}_snr")
    base = out.get("gradvar_encoder_sgvb_b")
    if base:
        for other in ("sgvb_a", "score_function", "score_function_baseline", "iwae"):
            if f"gradvar_encoder_{other}" in out:
                out[f"gradvar_ratio_encoder_{other}_over_sgvb_b"] = out[f"gradvar_encoder_{other}"] / base
    return out


def gradvar_table(stats: list[GradStats]) -> pd.DataFrame:
    table = pd.DataFrame([asdict(s) for s in stats])
    base = table.loc[table["estimator"] == "sgvb_b", "encoder_var"]
    if len(base):
        table["encoder_var_vs_sgvb_b"] = table["encoder_var"] / float(base.iloc[0])
    return table
