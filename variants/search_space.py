"""The hyperparameter search space of ``python -m bench.tune``, declared next to the variants it tunes.

Every variant is tuned over the same dimensions (where they apply), so that variants compare with the same
budget. A dimension either changes the variant (an axis of ``Variant``) or the harness (a ``TrainConfig``
field):

==================  ===========================  ===========  =============================================
name                range                        changes      applies to
==================  ===========================  ===========  =============================================
lr                  1e-4 .. 1e-2, log scale      harness      every variant (Adam's learning rate)
batch_size          32, 64, 128, 256             harness      every variant
hidden              100 .. 800, step 100         variant      every variant (MLP width 784-H-z, z-H-784)
gaussian_variance   1e-3 .. 1, log scale         variant      Gaussian decoder with a fixed c in N(x; f(z), cI)
==================  ===========================  ===========  =============================================

The latent size, the estimator, L and the seed are what is compared, not tuned: they stay fixed per study.
The Gaussian variance is not tuned when the variant learns it (its start value hardly matters then). The
estimators' own axes (MIWAE/PIWAE's groups M, CIWAE's beta, k) are not tuned either: they define the estimator
compared, as L does; every estimator, the STL, DReG and Rainforth et al. ones included, is tuned over the same
dimensions above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from variants.registry import Variant

_ALWAYS: Callable[[Variant], bool] = lambda v: True


@dataclass(frozen=True)
class Dimension:
    """One tuned hyperparameter: its range, whether it is a Variant axis or a harness setting, and when it
    applies."""

    name: str
    kind: Literal["float", "int", "categorical"]
    target: Literal["variant", "harness"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    applies: Callable[[Variant], bool] = _ALWAYS
    doc: str = ""

    def describe(self) -> str:
        if self.kind == "categorical":
            rng = ", ".join(map(str, self.choices))
        else:
            rng = f"{self.low:g} .. {self.high:g}" + (", log scale" if self.log else "")
            rng += f", step {self.step}" if self.step else ""
        return f"{self.name} ({rng}): {self.doc}"


SEARCH_SPACE: tuple[Dimension, ...] = (
    Dimension("lr", "float", "harness", 1e-4, 1e-2, log=True, doc="Adam learning rate"),
    Dimension("batch_size", "categorical", "harness", choices=(32, 64, 128, 256), doc="minibatch size"),
    Dimension("hidden", "int", "variant", 100, 800, step=100, doc="MLP hidden width"),
    Dimension("gaussian_variance", "float", "variant", 1e-3, 1.0, log=True,
              applies=lambda v: v.decoder == "gaussian" and not v.learn_variance,
              doc="c of the Gaussian decoder N(x; f(z), cI), when fixed"),
)


def dimensions(variant: Variant) -> list[Dimension]:
    """The dimensions tuned for ``variant``."""
    return [d for d in SEARCH_SPACE if d.applies(variant)]


def suggest(trial: Any, variant: Variant) -> tuple[Variant, dict[str, Any]]:
    """Sample one point for ``trial`` (an optuna.Trial): the variant with its tuned axes set, and the
    TrainConfig fields to override."""
    axes: dict[str, Any] = {}
    harness: dict[str, Any] = {}
    for d in dimensions(variant):
        if d.kind == "float":
            value: Any = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        elif d.kind == "int":
            value = trial.suggest_int(d.name, int(d.low), int(d.high), step=d.step or 1, log=d.log)
        else:
            value = trial.suggest_categorical(d.name, list(d.choices))
        (axes if d.target == "variant" else harness)[d.name] = value
    return variant.replace(**axes), harness


def describe(variant: Variant | None = None) -> str:
    """One line per dimension (for --help)."""
    dims = SEARCH_SPACE if variant is None else dimensions(variant)
    return "\n".join(f"  {d.describe()}" for d in dims)
