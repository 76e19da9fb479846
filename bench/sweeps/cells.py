"""The cells of a grid: one combination of the lists given to bench.grid each, the params its run gets (and is
recognised by), and the FINISHED runs of the experiment that already are a cell (whatever sweep made them)."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Run

from bench.core.config import TrainConfig
from bench.errors import UserError
from bench.tracking.mlflow_tracker import param_value
from bench.tracking.names import ANALYSIS_TAG, EPOCHS_TAG, MEMBER_TAG
from bench.training.identity import run_name, run_params
from variants.registry import Variant, get_variant

NOT_COMPARED = ("device", "compile")  # where and how a run ran, not what it computed


@dataclass(frozen=True)
class Cell:
    """One combination: what to train, and the params its run gets (and is recognised by)."""

    name: str
    variant: Variant
    cfg: TrainConfig
    params: dict[str, str]  # as MLflow stores them, without NOT_COMPARED

    def matches(self, run_params: dict[str, str]) -> bool:
        return all(run_params.get(k) == v for k, v in self.params.items())


def build_cells(args: argparse.Namespace, device: str, digest: str) -> list[Cell]:
    """The cartesian product in the order given, combinations that train the same thing counted once."""
    cells: list[Cell] = []
    seen: set[str] = set()
    for (name, latent, seed, epochs, bs, lr, samples, decoder, hidden, c, precision, binarize,
         limit) in itertools.product(args.variants, args.latents, args.seeds, args.epochs, args.batch_size,
                                     args.lr, args.samples, args.decoder, args.hidden, args.gaussian_variance,
                                     args.precision, args.binarize, args.limit_train):
        try:
            variant = get_variant(name).replace(samples=samples, decoder=decoder, hidden=hidden,
                                                gaussian_variance=c)
        except (KeyError, ValueError) as e:
            raise UserError(f"{name} with samples={samples}, decoder={decoder}: {str(e).strip(chr(39))}") from None
        cfg = TrainConfig(latent=latent, epochs=epochs, batch_size=bs, lr=lr, seed=seed, device=device,
                          precision=precision, binarize=binarize, limit_train=limit, compile=args.compile)
        params = {k: param_value(v) for k, v in run_params(variant, cfg, digest).items() if k not in NOT_COMPARED}
        key = json.dumps(params, sort_keys=True)
        if key not in seen:  # e.g. a Gaussian variance given for a Bernoulli variant changes nothing
            seen.add(key)
            cells.append(Cell(run_name(variant, cfg), variant, cfg, params))
    return cells


def grid_hash(cells: list[Cell]) -> str:
    text = "\n".join(json.dumps(c.params, sort_keys=True) for c in cells)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def trained_params(run: Run) -> dict[str, str]:
    """The run's params as trained: a resumed run's new epochs target (a tag: params cannot change) replaces
    the epochs it started with, so a 1-epoch run resumed to 2 epochs is a 2-epoch cell, not a 1-epoch one."""
    params = dict(run.data.params)
    if EPOCHS_TAG in run.data.tags:
        params["epochs"] = run.data.tags[EPOCHS_TAG]
    return params


def finished_runs(client: MlflowClient, experiment_id: str, cells: list[Cell]) -> dict[int, Run]:
    """Cell index -> a FINISHED run with its settings, from one paged search per variant over the experiment."""
    by_key: dict[tuple[str, str, str], list[int]] = {}
    for i, c in enumerate(cells):
        by_key.setdefault((c.params["variant"], c.params["latent"], c.params["seed"]), []).append(i)
    done: dict[int, Run] = {}
    for name in sorted({c.params["variant"] for c in cells}):  # params support = but not IN
        token = None
        while True:
            page = client.search_runs([experiment_id], f"attributes.status = 'FINISHED' and params.variant = "
                                      f"'{name}'", max_results=1000, page_token=token)
            for run in page:
                if ANALYSIS_TAG in run.data.tags:  # an analysis run has its training run's params, not a model
                    continue
                rp = trained_params(run)
                for i in by_key.get((rp.get("variant"), rp.get("latent"), rp.get("seed")), []):
                    if i not in done and cells[i].matches(rp):
                        done[i] = run
            token = page.token
            if not token:
                break
    return done


def adopt(client: MlflowClient, run_id: str, sweep: str) -> None:
    """Count a FINISHED run the sweep reuses as one of its own: ``bench.report --sweep`` selects it by this tag
    too (its bench.sweep tag keeps the sweep that made it)."""
    client.set_tag(run_id, MEMBER_TAG.format(sweep), "true")


def run_seconds(run: Run) -> float:
    """A finished run's wall time, start to end, in seconds."""
    return max(0.0, ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000)
