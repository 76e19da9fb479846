"""What the latent space is used for: active units, KL per dimension, and the pictures for 2-D latents.

Figures use matplotlib's object API (``Figure``, no pyplot): no global backend, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from bench.core.devices import accumulation_dtype
from bench.evaluation.images import save_grid

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2015: active if Var_x(E_q[z_j|x]) > 0.01
MANIFOLD_SIZE = 20  # Kingma & Welling's learned-manifold figure: a 20 x 20 grid


@torch.inference_mode()
def encoder_moments(model: nn.Module, x: Tensor, batch_size: int = 2000) -> tuple[Tensor, Tensor]:
    """mu and logvar of q(z|x) for every image of x: two [N, J] tensors."""
    parts = [torch.cat(model.encode(x[i:i + batch_size]), -1) for i in range(0, len(x), batch_size)]
    mu, logvar = torch.cat(parts).chunk(2, dim=-1)
    return mu, logvar


def mean_variance(mu: Tensor) -> Tensor:
    """Var over the data of each dimension's encoder mean, Burda et al.'s activity statistic: [J]."""
    wide = accumulation_dtype(mu.device)
    return mu.to(wide).var(dim=0, unbiased=False) if len(mu) > 1 else torch.zeros(mu.shape[-1], dtype=wide)


def kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """E_x KL(q(z_j|x) || N(0, 1)) = E_x 1/2 (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2), per dimension: [J].

    These sum to the analytic KL term of the ELBO (averaged over the data); a collapsed dimension has ~0.
    """
    wide = accumulation_dtype(mu.device)
    mu, logvar = mu.to(wide), logvar.to(wide)
    return (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).mean(0)


def kl_table(mu: Tensor, logvar: Tensor, threshold: float = ACTIVE_THRESHOLD) -> pd.DataFrame:
    """One row per latent dimension: its mean KL, the variance of its encoder mean, and whether it is active."""
    var = mean_variance(mu)
    return pd.DataFrame({
        "dim": range(mu.shape[-1]),
        "kl": kl_per_dim(mu, logvar).cpu().numpy(),
        "mean_variance": var.cpu().numpy(),
        "active": (var > threshold).cpu().numpy(),
    })


def save_kl_artifacts(table: pd.DataFrame, folder: Path) -> list[Path]:
    """kl_per_dim.csv, kl_per_dim.md and a bar chart kl_per_dim.png (active dimensions coloured)."""
    csv, md, png = (folder / f"kl_per_dim.{ext}" for ext in ("csv", "md", "png"))
    table.to_csv(csv, index=False)
    total = table["kl"].sum()
    md.write_text(f"KL per latent dimension (nats, mean over the test set; total {total:.2f}); active: "
                  f"Var_x(mu_j) > {ACTIVE_THRESHOLD}, {int(table['active'].sum())} of {len(table)}\n\n"
                  + table.to_markdown(index=False, floatfmt=".4f") + "\n")
    fig = Figure(figsize=(max(4.0, 0.3 * len(table) + 1.5), 3.2), layout="constrained")
    ax = fig.add_subplot()
    colours = ["tab:blue" if a else "tab:grey" for a in table["active"]]
    ax.bar(table["dim"], table["kl"], color=colours)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per dimension: {int(table['active'].sum())} of {len(table)} active (blue)")
    ax.set_xticks(list(table["dim"]))
    ax.tick_params(axis="x", labelsize=7)
    fig.savefig(png, dpi=120)
    return [csv, md, png]


def save_latent_scatter(mu: Tensor, labels: Tensor, path: Path) -> Path:
    """The test set's encoder means in the latent plane, coloured by digit."""
    mu, labels = mu.float().cpu().numpy(), labels.cpu().numpy()
    fig = Figure(figsize=(6.0, 5.2), layout="constrained")
    ax = fig.add_subplot()
    points = ax.scatter(mu[:, 0], mu[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=3, alpha=0.7,
                        linewidths=0)
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("$z_1$ (encoder mean)")
    ax.set_ylabel("$z_2$ (encoder mean)")
    ax.set_title(f"test set in the latent plane ({len(mu)} images)")
    fig.savefig(path, dpi=120)
    return path


def manifold_grid(size: int = MANIFOLD_SIZE) -> Tensor:
    """The latent points of Kingma & Welling's manifold figure: evenly spaced quantiles (i + 1/2) / size
    mapped through the inverse normal CDF, as [size * size, 2]; row-major, z_2 decreasing down the rows,
    z_1 increasing along them, so the picture reads like a plot of the latent plane."""
    q = torch.special.ndtri((torch.arange(size, dtype=torch.float64) + 0.5) / size).float()
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack((z1, z2), dim=-1).reshape(-1, 2)


@torch.inference_mode()
def save_manifold(model: nn.Module, path: Path, size: int = MANIFOLD_SIZE) -> Path:
    """size x size decodes (the decoder's mean image) over the latent plane."""
    device = next(model.parameters()).device
    z = manifold_grid(size).to(device)
    images = model.likelihood.mean(model.decode(z))
    save_grid(images, path, nrow=size, padding=1)
    return path
