"""Evaluation beyond the per-epoch ELBO: importance-sampled NLL, active units, gradient variance.

(Issue 3 builds this module; until then final_evaluation does nothing.)
"""

from __future__ import annotations

from typing import Any

from torch import nn


def final_evaluation(model: nn.Module, variant: Any, cfg: Any, data: Any, tracker: Any,
                     nll_samples: int = 0) -> dict[str, float]:
    """Called by bench.run after the last epoch, before the model is logged."""
    return {}
