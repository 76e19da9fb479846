"""PNG grids of digits: the seed's reconstruction and sample pictures, the 2-d latent manifold.

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
