"""A run's identity in the store: its name, its params (every variant axis and harness setting) and tags, and
the variant and settings read back from them (for --resume and the grid's matching)."""

from __future__ import annotations

from typing import Any

from bench.core.config import TrainConfig
from bench.core.data import NAME as DATA_NAME
from bench.errors import UserError
from bench.tracking.names import MEMBER_TAG, NOTE_TAG, SWEEP_TAG
from variants.registry import REGISTRY, Variant, get_variant


def run_name(variant: Variant, cfg: TrainConfig) -> str:
    base = REGISTRY[variant.name]
    decoder = f"-{variant.decoder}" if variant.decoder != base.decoder else ""
    return f"{variant.name}{decoder}-z{cfg.latent}-L{variant.samples}-s{cfg.seed}"


def run_params(variant: Variant, cfg: TrainConfig, data_digest: str) -> dict[str, Any]:
    return {**variant.axes(), **cfg.params(), "data": DATA_NAME, "data_digest": data_digest}


def run_tags(variant: Variant, sweep: str | None = None) -> dict[str, str]:
    tags = {NOTE_TAG: REGISTRY[variant.name].description}
    if sweep:  # the sweep that made it, and its membership (which reused runs get too: bench.sweeps.cells.adopt)
        tags[SWEEP_TAG] = sweep
        tags[MEMBER_TAG.format(sweep)] = "true"
    return tags


def restore(run: Any, epochs: int | None, device: str) -> tuple[Variant, TrainConfig]:
    """The variant and settings a run was started with (its params), with ``epochs`` (if given) as the new
    target and ``device`` as where it goes on."""
    p = run.data.params
    try:
        base = get_variant(p["variant"])
        types = {f: type(getattr(base, f)) for f in ("samples", "hidden", "gaussian_variance")}
        axes = {k: types[k](p[k]) for k in types if k in p}
        axes["decoder"] = p.get("decoder", base.decoder)
        for flag in ("learn_variance", "baseline"):
            if flag in p:
                axes[flag] = p[flag] == "True"
        variant = base.replace(**axes)
        limit = p.get("limit_train", "None")
        cfg = TrainConfig(
            latent=int(p["latent"]), epochs=epochs if epochs is not None else int(p["epochs"]),
            batch_size=int(p["batch_size"]), lr=float(p["lr"]), seed=int(p["seed"]),
            device=device, precision=p.get("precision", "fp32"),
            binarize=p.get("binarize", "none"), limit_train=None if limit == "None" else int(limit),
            validation=int(p.get("validation", 0)), compile=p.get("compile") == "True")
    except (KeyError, ValueError) as e:
        raise UserError(f"run {run.info.run_id} was not made by bench.run (param {e} missing or bad)") from None
    return variant, cfg
