"""The grid (python -m bench.grid): a cartesian sweep of ordinary tracked runs, resumable and shared between processes.

    python -m bench.grid --variants sgvb_a,sgvb_b --latents 2,10,20 --seeds 1,2,3 --epochs 10
    # more processes (shells, machines) with the same arguments split the remaining work:
    python -m bench.grid --variants sgvb_a,sgvb_b --latents 2,10,20 --seeds 1,2,3 --epochs 10 --storage grid.journal

Each flag takes a comma-separated list. Every combination is one run, as ``bench.run`` makes it, tagged
``bench.sweep=<id>``. A combination already FINISHED in the experiment with the same settings (every variant
axis and harness setting, ``--limit-train`` included; the device aside) is skipped, so an interrupted sweep is
resumed by calling it again; a run made by another sweep (or by bench.run) is reused and tagged
``bench.in_sweep.<id>``, so that ``bench.report --sweep <id>`` counts it in. Processes hand out combinations
through an Optuna study with a GridSampler on the storage (trial n runs combination n, so no two processes
start the same one); a combination whose process died or whose run failed is queued again by the next call.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from bench.core.config import TrainConfig
from bench.core.data import NAME as DATA_NAME
from bench.core.devices import resolve_device
from bench.core.interrupts import graceful_interrupts
from bench.core.splits import split_validation
from bench.errors import UserError
from bench.sweeps import storage as stg
from bench.sweeps import studies, workers
from bench.sweeps.process import open_store_and_data, quiet_optuna, stopwatch
from bench.tracking.mlflow_tracker import MlflowTracker, param_value
from bench.tracking.names import MEMBER_TAG
from bench.tracking.store import resolve_tracking_uri
from bench.training.identity import run_name, run_params, run_tags
from bench.training.lifecycle import execute
from variants.registry import Variant, get_variant

PROG = "python -m bench.grid"
NOT_COMPARED = ("device",)  # where a run ran, not what it computed
DUPLICATE_ATTR = "bench.duplicate"


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
                          precision=precision, binarize=binarize, limit_train=limit)
        params = {k: param_value(v) for k, v in run_params(variant, cfg, digest).items() if k not in NOT_COMPARED}
        key = json.dumps(params, sort_keys=True)
        if key not in seen:  # e.g. a Gaussian variance given for a Bernoulli variant changes nothing
            seen.add(key)
            cells.append(Cell(run_name(variant, cfg), variant, cfg, params))
    return cells


def grid_hash(cells: list[Cell]) -> str:
    text = "\n".join(json.dumps(c.params, sort_keys=True) for c in cells)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def finished_run(client: MlflowClient, experiment_id: str, cell: Cell) -> str | None:
    """A FINISHED run in the experiment with the cell's settings, if there is one."""
    p = cell.params
    flt = (f"attributes.status = 'FINISHED' and params.variant = '{p['variant']}' "
           f"and params.latent = '{p['latent']}' and params.seed = '{p['seed']}'")
    for run in client.search_runs([experiment_id], flt, max_results=1000):
        if cell.matches(run.data.params):
            return run.info.run_id
    return None


def adopt(client: MlflowClient, run_id: str, sweep: str) -> None:
    """Count a FINISHED run the sweep reuses as one of its own: ``bench.report --sweep`` selects it by this tag
    too (its bench.sweep tag keeps the sweep that made it)."""
    client.set_tag(run_id, MEMBER_TAG.format(sweep), "true")


def finished_runs(client: MlflowClient, experiment_id: str, cells: list[Cell]) -> dict[int, str]:
    """Cell index -> a FINISHED run with its settings, from one paged search over the experiment."""
    by_key: dict[tuple[str, str, str], list[int]] = {}
    for i, c in enumerate(cells):
        by_key.setdefault((c.params["variant"], c.params["latent"], c.params["seed"]), []).append(i)
    done: dict[int, str] = {}
    for name in sorted({c.params["variant"] for c in cells}):  # params support = but not IN
        token = None
        while True:
            page = client.search_runs([experiment_id], f"attributes.status = 'FINISHED' and params.variant = "
                                      f"'{name}'", max_results=1000, page_token=token)
            for run in page:
                rp = run.data.params
                for i in by_key.get((rp.get("variant"), rp.get("latent"), rp.get("seed")), []):
                    if i not in done and cells[i].matches(rp):
                        done[i] = run.info.run_id
            token = page.token
            if not token:
                break
    return done


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, for a grid whose failed combinations are queued again (enqueue_trial).

    Its after_trial reads the finished trial's grid id to decide whether the grid is done, but a queued trial
    has none (Optuna 5: KeyError 'grid_id' when one combination is left unstarted). For those, the grid is
    done when no combination is left unvisited; GridWorker.stop_when_done and main's loop decide the rest.
    """

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        if "grid_id" in trial.system_attrs:
            super().after_trial(study, trial, state, values)
        elif self.is_exhausted(study):
            study.stop()


def _cell_of(t: FrozenTrial) -> int | None:
    if "cell" in t.params:
        return t.params["cell"]
    return (t.system_attrs.get("fixed_params") or {}).get("cell")


def _queued(t: FrozenTrial) -> bool:
    """Enqueued by a later call or retried after its worker died (not handed out by the GridSampler)."""
    return "fixed_params" in t.system_attrs or "failed_trial" in t.system_attrs


class GridWorker:
    def __init__(self, client: MlflowClient, experiment_id: str, experiment: str, study: optuna.Study,
                 cells: list[Cell], sweep: str, data: Any, progress: bool, nll_samples: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> None:
        self.client, self.experiment_id, self.experiment = client, experiment_id, experiment
        self.study, self.cells, self.sweep, self.data = study, cells, sweep, data
        self.progress, self.nll_samples, self.on_stale = progress, nll_samples, on_stale
        self.counts: dict[str, int] = {}
        self.times: dict[str, float] = {}

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(workers.WORKER_ATTR, workers.WORKER)
        index = trial.suggest_categorical("cell", list(range(len(self.cells))))
        cell = self.cells[index]
        trial.set_user_attr("name", cell.name)
        if self._taken(trial.number, index):
            trial.set_user_attr(DUPLICATE_ATTR, True)
            self.study.stop()
            raise optuna.TrialPruned(f"{cell.name} is run by another trial")
        existing = finished_run(self.client, self.experiment_id, cell)
        if existing is not None:
            adopt(self.client, existing, self.sweep)
            trial.set_user_attr(workers.RUN_ATTR, existing)
            trial.set_user_attr("skipped", True)
            self._count("skipped")
            print(f"{cell.name}: already FINISHED as run {existing}; skipped", flush=True)
            return 0.0
        tags = {**run_tags(cell.variant, self.sweep), **studies.trial_run_tags(self.study, trial.number)}
        tracker = MlflowTracker.start(self.client, self.experiment, cell.name,
                                      run_params(cell.variant, cell.cfg, self.data.digest), tags=tags)
        trial.set_user_attr(workers.RUN_ATTR, tracker.run_id)
        tracker.log_dataset(DATA_NAME, self.data.digest, self.data.source, "train", self.data.test_x[:1].numpy())
        print(f"{cell.name}: run {tracker.run_id}", flush=True)
        with stopwatch(self.times, "runs"):
            status = execute(tracker, cell.variant, cell.cfg, self.data, None, progress=self.progress,
                             nll_samples=self.nll_samples)
        if status == 130:
            raise KeyboardInterrupt  # the run is KILLED already; stop the sweep
        if status != 0:
            self._count("failed")
            return float("nan")  # the trial FAILs; the next call of the sweep queues it again
        self._count("ran")
        return float(self.client.get_run(tracker.run_id).data.metrics.get("test_loss", 0.0))

    def _taken(self, number: int, index: int) -> bool:
        """Whether another trial runs (or ran) this combination: then this one is surplus. The GridSampler hands
        combination n to trial n; duplicates arise only when trials outnumber the grid, or from retries queued
        by two calls at once."""
        trials = self.study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == number)
        for t in trials:
            if t.number == number or _cell_of(t) != index or t.user_attrs.get(DUPLICATE_ATTR):
                continue
            if t.state == TrialState.RUNNING and t.number < number:
                return True
            if t.state == TrialState.COMPLETE and not _queued(me):
                return True
        return False

    def stop_when_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        workers.fail_dead_trials(study, self.on_stale)  # journal storages have no heartbeat to do it
        if not work_left(study, len(self.cells)):
            study.stop()


def work_left(study: optuna.Study, n: int) -> bool:
    """Combinations not yet handed out, or queued again."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    # The GridSampler's grid ids (not the cells: it shuffles them) of the trials it has handed out.
    started = {t.system_attrs.get("grid_id") for t in trials}
    return len(set(range(n)) - started) > 0


def queue_again(study: optuna.Study, todo: list[int]) -> int:
    """Queue the combinations that are not FINISHED in MLflow although all their trials are over (the run
    failed, was killed, or was deleted)."""
    by_cell: dict[int, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        cell = _cell_of(t)
        if cell is not None:
            by_cell.setdefault(cell, []).append(t)
    n = 0
    for i in todo:
        trials = by_cell.get(i, [])
        if trials and all(t.state.is_finished() for t in trials):
            study.enqueue_trial({"cell": i})
            n += 1
    return n


def run_grid(args: argparse.Namespace) -> int:
    """What ``python -m bench.grid`` does with its arguments: run this process's share of the sweep."""
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    if args.storage:
        stg.check_storage_spec(args.storage, resolve_tracking_uri(args.tracking_uri))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a server's "View run" per run
    quiet_optuna()
    client, experiment_id, data = open_store_and_data(args.tracking_uri, args.experiment, args.data_dir)
    cells = build_cells(args, device, data.digest)
    for cell in cells:
        split_validation(data, cell.cfg)  # settings the data cannot meet fail here, before any run is made
    ghash = grid_hash(cells)
    sweep = studies.check_name(args.sweep or f"grid-{ghash}", "sweep id")
    done = finished_runs(client, experiment_id, cells)
    if not args.dry_run:
        for run_id in done.values():
            adopt(client, run_id, sweep)
    todo = [i for i in range(len(cells)) if i not in done]
    print(f"sweep {sweep}: {len(cells)} combinations, {len(done)} already finished, {len(todo)} to run", flush=True)
    if args.dry_run:
        for i, cell in enumerate(cells):
            shown = {k: cell.params[k] for k in ("epochs", "lr", "batch_size", "limit_train")}
            print(f"  {cell.name}  {f'done (run {done[i]})' if i in done else 'to run'}  {json.dumps(shown)}")
        return 0
    if not todo:
        return 0
    on_stale = workers.stale_trial_callback(client)
    spec = args.storage or stg.default_storage(client.tracking_uri)
    storage = stg.open_storage(spec, args.heartbeat, on_stale)
    sampler = GridSampler({"cell": list(range(len(cells)))}, seed=0)  # the same in every process
    study, created = stg.create_or_load(f"bench.grid:{sweep}:{ghash}", storage, sampler)
    studies.agree_settings(study, {"kind": "grid", "sweep": sweep, "cells": len(cells), "grid": ghash}, created,
                      "use another --sweep")
    workers.clean_up(client, experiment_id, study, on_stale)
    with stg.storage_lock(spec):  # two calls starting at once must not queue the same combination twice
        queued = queue_again(study, todo)
    if queued:
        print(f"queued {queued} combinations again (failed, killed or deleted runs)", flush=True)
    if not work_left(study, len(cells)):
        print("every remaining combination is being run by another process", flush=True)
        stg.close_storage(storage)
        return 0
    progress = not args.no_progress and sys.stderr.isatty()
    worker = GridWorker(client, experiment_id, args.experiment, study, cells, sweep, data, progress,
                        args.nll_samples, on_stale)
    status = 0
    try:
        with graceful_interrupts():
            # The GridSampler stops the study once every combination has had a trial, even when some are
            # queued again: go on until none is waiting.
            while work_left(study, len(cells)):
                study.optimize(worker.objective, callbacks=[worker.stop_when_done])
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; call it again to resume", file=sys.stderr)
        status = 130
    finally:
        workers.clean_up(client, experiment_id, study, on_stale)
        stg.close_storage(storage)
    if status == 0 and worker.counts.get("failed"):
        status = 1  # as bench.run: a run failed (the next call of the sweep tries it again)
    counts = ", ".join(f"{n} {k}" for k, n in worker.counts.items()) or "nothing"
    wall = time.perf_counter() - t_start
    print(f"sweep {sweep}: this process {counts} in {wall:.1f} s ({worker.times.get('runs', 0.0):.1f} s in runs); "
          f"select its runs with tags.`bench.sweep` = '{sweep}'")
    return status
