"""The PNG grids: torchvision's layout (nrow per row, padding around each image), 8-bit greyscale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.evaluation.images import save_grid


def test_grid_layout_and_pixels(tmp_path: Path) -> None:
    images = torch.zeros(10, 784)
    images[0] = 1.0  # first image white
    images[9, :28] = 0.5  # last image: top row grey
    path = save_grid(images, tmp_path / "g.png", nrow=4, padding=2)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (4 * 30 + 2, 3 * 30 + 2)  # 4 columns, ceil(10 / 4) = 3 rows
        pixels = np.asarray(im)
    assert (pixels[2:30, 2:30] == 255).all()  # image 0 at row 0, column 0, inside the padding
    assert (pixels[:2] == 0).all() and (pixels[:, :2] == 0).all() and (pixels[30:32, 2:30] == 0).all()
    assert (pixels[62, 32:60] == 128).all() and (pixels[63:90, 32:60] == 0).all()  # image 9: row 2, column 1
    assert (pixels[62:90, 62:] == 0).all()  # no images 10 and 11: blank cells


def test_grid_accepts_channel_layout_and_clamps(tmp_path: Path) -> None:
    images = torch.linspace(-1, 2, 4 * 784).view(4, 1, 28, 28)
    with Image.open(save_grid(images, tmp_path / "c.png", nrow=8, padding=1)) as im:
        assert im.size == (4 * 29 + 1, 29 + 1)
        pixels = np.asarray(im)
    assert pixels[1, 1] == 0 and pixels[28, 4 * 29 - 1] == 255


def test_grid_refuses_non_square_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="square"):
        save_grid(torch.zeros(2, 10), tmp_path / "x.png")
