"""A run's harness settings (every one becomes a param of the run), and the choices they take."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from bench.errors import UserError

PRECISIONS = ("fp32", "bf16")
BINARIZE = ("none", "static", "dynamic")


@dataclass(frozen=True)
class TrainConfig:
    """Every harness setting that changes a run's numbers (each becomes a param of the run)."""

    latent: int = 20
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    binarize: str = "none"
    limit_train: int | None = None
    validation: int = 0  # training images held out (the last ones) for val_* metrics: tuning's split
    compile: bool = False  # the step as one torch.compile graph (bench.training.steps): the last bits differ

    def __post_init__(self) -> None:
        checks = [
            (self.latent >= 1, f"latent size must be a positive integer, got {self.latent}"),
            (self.epochs >= 0, f"epochs must be 0 or more, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be a positive integer, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"learning rate must be a positive number, got {self.lr}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.binarize in BINARIZE, f"binarize must be one of {', '.join(BINARIZE)}"),
            (self.limit_train is None or self.limit_train >= 1, "limit-train must be a positive integer"),
            (self.validation >= 0, f"validation must be 0 or more images, got {self.validation}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def check_split(self, n_train: int) -> int:
        """The training images left after the validation split of ``n_train``; settings the data cannot meet are
        user errors (checked before a run is made, without the data's tensors)."""
        if self.validation >= n_train:
            raise UserError(f"validation must leave training images: give fewer than {n_train}, got {self.validation}")
        left = n_train - self.validation
        if self.limit_train is not None and self.limit_train > left:
            raise UserError(f"limit-train {self.limit_train} is more than the {left} training images"
                            + (f" left after validation {self.validation}" if self.validation else "")
                            + f"; give at most {left}")
        return left

    def params(self) -> dict[str, Any]:
        return asdict(self)
