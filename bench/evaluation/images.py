"""PNG grids of digits: the seed's reconstruction and sample pictures (every epoch), the 2-d latent manifold.

Written here rather than taken from torchvision.utils.save_image: importing torchvision costs ~0.8 s, which
every run paid in its first epoch and every tuning worker at start-up. Same layout as torchvision's grid
(``nrow`` images per row, ``padding`` black pixels around each), saved as 8-bit greyscale.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from bench.core.rng import SAMPLES_GRID, generator
from variants.model import VAE


def save_grid(images: Tensor, path: Path, nrow: int = 8, padding: int = 2) -> Path:
    """images: N square images in [0, 1], as [N, H*W] or [N, 1, H, W] -> one PNG at ``path``."""
    x = images.detach().float().cpu().reshape(len(images), -1)
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise ValueError(f"images must be square, got {x.shape[1]} pixels each")
    cols = min(nrow, len(x))
    rows = math.ceil(len(x) / cols)
    cell = side + padding
    canvas = torch.zeros(rows * cell + padding, cols * cell + padding)
    for i, image in enumerate(x.view(-1, side, side)):
        top, left = padding + (i // cols) * cell, padding + (i % cols) * cell
        canvas[top:top + side, left:left + side] = image
    Image.fromarray(canvas.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy()).save(path)
    return path


@torch.inference_mode()
def save_grids(model: VAE, test_x: Tensor, epoch: int, folder: Path, seed: int) -> list[Path]:
    """The seed's two pictures: 8 test digits above their reconstructions, and 64 decodes of prior draws."""
    lik = model.likelihood
    x = test_x[:8]
    recon = lik.mean(model.decode(model.encode(x)[0]))
    z = torch.randn((64, model.latent), generator=generator(test_x.device, SAMPLES_GRID, seed), device=test_x.device)
    samples = lik.mean(model.decode(z))
    paths = [folder / f"reconstruction_{epoch:03d}.png", folder / f"samples_{epoch:03d}.png"]
    save_grid(torch.cat([x, recon]), paths[0], nrow=8)
    save_grid(samples, paths[1], nrow=8)
    return paths
