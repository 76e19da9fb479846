"""The grid (python -m bench.grid): a cartesian sweep of ordinary tracked runs, resumable and shared between processes.

    python -m bench.grid --variants sgvb_a,sgvb_b --latents 2,10,20 --seeds 1,2,3 --epochs 10
    # more processes (shells, machines) with the same arguments split the remaining work:
    python -m bench.grid --variants sgvb_a,sgvb_b --latents 2,10,20 --seeds 1,2,3 --epochs 10 --storage grid.journal

Each flag takes a comma-separated list. Every combination (a cell, bench.sweeps.cells) is one run, as
``bench.run`` makes it, tagged ``bench.sweep=<id>``. A cell already FINISHED in the experiment with the same
settings (every variant axis and harness setting, ``--limit-train`` and a resumed run's epochs target included;
the device aside) is skipped, so an interrupted sweep is resumed by calling it again; a run made by another sweep
(or by bench.run) is reused. Every run of the sweep, made or reused, carries ``bench.in_sweep.<id> = true``: the
one filter the command prints (bench.tracking.names.sweep_filter) finds them all, in the MLflow UI and in
mlflow.search_runs, and ``bench.report --sweep <id>`` counts them in. The runs a sweep makes sit under its parent
run (``<id> · grid``, bench.role=sweep, kept out of reports' comparisons); a reused run keeps the parent it had.
Processes hand the cells out through a queue of Optuna trials in a bookkeeping study (bench.sweeps.queue, where
the states of a cell are drawn), by default in grid-queue.db, apart from bench.tune's studies (storage.grid_storage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from mlflow import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from bench import progs
from bench.core.data import NAME as DATA_NAME
from bench.core.devices import resolve_device
from bench.core.interrupts import graceful_interrupts
from bench.core.splits import split_validation
from bench.sweeps import queue, studies, workers
from bench.sweeps import storage as stg
from bench.sweeps.cells import Cell, adopt, build_cells, finished_runs, grid_hash, run_seconds
from bench.sweeps.process import open_store_and_data, quiet_optuna
from bench.sweeps.study_summary import OBJECTIVE_ATTR
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import FAILURE_TAG, PARENT_TAG, sweep_filter
from bench.tracking.store import browse_hint, resolve_tracking_uri, ui_address
from bench.training.identity import run_params, run_tags
from bench.training.lifecycle import execute

PROG = progs.GRID
# The bookkeeping study's trial value: how long the cell's run took, in s to 0.1 s (never a test metric). By default
# the study lives in a storage of its own (storage.grid_storage), out of the tuning studies' dashboard; opened there
# anyway, optuna-dashboard draws a "Best Trial" card for it (it does for any COMPLETE trial), which this names.
METRIC = "run wall time in s (bookkeeping, not a best)"  # short: the dashboard's history axis is its title
SECONDS_DECIMALS = 1
NOTE = ("the run's wall time in s, to 0.1 s, for the ETA; its Best Trial card is the fastest run, not a best model "
        "(compare the runs with bench.report)")
ABOUT = ("bookkeeping of bench.grid: one trial per cell to run, its value the run's wall seconds; nothing is "
         "selected here (compare the runs with bench.report)")


def study_name(sweep: str, ghash: str) -> str:
    """Named for what it is; the grid's hash tells two grids under one --sweep id apart."""
    return f"bench.grid bookkeeping {sweep}" + ("" if sweep.endswith(ghash) else f" {ghash}")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


@dataclass
class GridWorker:
    """This process's share of the sweep: pop a cell, run it (or adopt its FINISHED run), until none is left."""

    client: MlflowClient
    experiment_id: str
    experiment: str
    study: optuna.Study
    storage: BaseStorage
    cells: list[Cell]
    sweep: str
    data: Any
    args: argparse.Namespace
    to_run: int  # cells that were not done when this call started: the N of "run k/N"
    parent_id: str | None = None  # the sweep's parent run
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    last_run: str | None = None

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def work(self) -> None:
        while (popped := queue.pop(self.study, self.storage)) is not None:
            self.run_cell(*popped)

    def _announce(self, cell: Cell) -> None:
        waiting, mean, running = queue.progress(self.study)
        k = max(1, self.to_run - waiting)
        eta = (f"ETA {_duration(mean * (waiting + 1) / max(1, running))}" if mean is not None
               else "ETA after the first run")
        print(f"run {k}/{self.to_run} {cell.name} ({eta})", flush=True)

    def run_cell(self, trial_id: int, trial: FrozenTrial) -> None:
        cell = self.cells[trial.user_attrs[queue.CELL_ATTR]]
        with workers.Lease(self.storage, trial_id, self.args.heartbeat) as lease:
            try:
                self._run(cell, trial, trial_id, lease)
            except BaseException:
                lease.finish(TrialState.FAIL)  # interrupted, or the store gave way: the next call runs it again
                raise

    def _run(self, cell: Cell, trial: FrozenTrial, trial_id: int, lease: workers.Lease) -> None:
        other = queue.runner_of(self.study, trial)
        if other is not None:
            self.storage.set_trial_user_attr(trial_id, queue.SURPLUS_ATTR, f"trial {other} runs this cell")
            lease.finish(TrialState.FAIL)
            return
        done = finished_runs(self.client, self.experiment_id, [cell]).get(0)
        if done is not None:  # finished meanwhile (by another sweep, or a worker that was thought lost)
            adopt(self.client, done.info.run_id, self.sweep)
            self.storage.set_trial_user_attr(trial_id, workers.RUN_ATTR, done.info.run_id)
            lease.finish(TrialState.COMPLETE, round(run_seconds(done), SECONDS_DECIMALS))
            self._count("adopted")
            print(f"{cell.name}: FINISHED meanwhile as run {done.info.run_id}; adopted", flush=True)
            return
        self._announce(cell)
        run = MlflowTracker.start(self.client, self.experiment, cell.name,
                                  run_params(cell.variant, cell.cfg, self.data.digest),
                                  tags={**run_tags(cell.variant, self.sweep),
                                        **({PARENT_TAG: self.parent_id} if self.parent_id else {})})
        self.storage.set_trial_user_attr(trial_id, workers.RUN_ATTR, run.run_id)
        run.log_dataset(DATA_NAME, self.data.digest, self.data.source, "train", self.data.test_x[:1].numpy())
        began = time.perf_counter()  # the trial's value: the run's wall seconds, to 0.1 s
        tracker = workers.LeasedTracker(run, lease, lambda: round(time.perf_counter() - began, SECONDS_DECIMALS))
        progress = not self.args.no_progress and sys.stderr.isatty()
        t0 = time.perf_counter()
        try:
            status = execute(tracker, cell.variant, cell.cfg, self.data, None, progress=progress,
                             nll_samples=self.args.nll_samples, hint=False)
        except workers.LostTrial as e:
            self._count("lost")
            print(f"{cell.name}: {e}", flush=True)
            return
        finally:
            self.seconds += time.perf_counter() - t0
        if status == 130:
            raise KeyboardInterrupt  # the run is KILLED already; stop the sweep (the trial FAILs in run_cell)
        if status != 0:  # a non-finite loss: deterministic, so retried a bounded number of times
            reason = self.client.get_run(run.run_id).data.tags.get(FAILURE_TAG, "non-finite loss")
            self.storage.set_trial_user_attr(trial_id, queue.NAN_ATTR, reason)
            lease.finish(TrialState.FAIL)
            self._count("failed")
            return
        self._count("ran")
        self.last_run = run.run_id
        print(f"{cell.name}: run {run.run_id} FINISHED in {_duration(time.perf_counter() - t0)}", flush=True)


def parent_name(sweep: str) -> str:
    """The sweep's parent run: its id first, so that the runs table's narrow Run Name column shows what differs."""
    return f"{sweep} · grid"


def sweep_parent(client: MlflowClient, experiment_id: str, study: optuna.Study, created: bool, sweep: str,
                 n_cells: int) -> str:
    """The sweep's MLflow parent run, made once per bookkeeping study (bench.sweeps.studies.parent_run). A study
    from before parent runs (trials queued, no parent recorded) gets one now."""
    params = {"grid_cells": n_cells, "grid_filter": sweep_filter(sweep)}  # a param "sweep" would shadow the tag
    note = (f"bench.grid sweep {sweep}: {n_cells} combinations. Its runs (reused ones included, which keep their "
            f"own parent): {sweep_filter(sweep)}")
    old = not created and studies.PARENT_ATTR not in study.user_attrs and bool(study.get_trials(deepcopy=False))
    return studies.parent_run(client, experiment_id, study, created or old, params, note,
                              run_name=parent_name(sweep), role="sweep")


def open_study(args: argparse.Namespace, client: MlflowClient, sweep: str, ghash: str,
               n_cells: int) -> tuple[str, BaseStorage, optuna.Study, bool]:
    name = study_name(sweep, ghash)
    spec = args.storage or stg.grid_storage(client.tracking_uri, name)
    storage = stg.open_storage(spec)
    study, created = stg.create_or_load(name, storage, optuna.samplers.RandomSampler(seed=0))
    if created:
        study.set_metric_names([METRIC])
        study.set_user_attr(OBJECTIVE_ATTR, NOTE)
    studies.agree_settings(study, {"kind": "grid", "about": ABOUT, "sweep": sweep, "cells": n_cells, "grid": ghash},
                           created, "use another --sweep")
    return spec, storage, study, created


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
        for run in done.values():
            adopt(client, run.info.run_id, sweep)
    todo = {i: c.name for i, c in enumerate(cells) if i not in done}
    print(f"sweep {sweep}: {len(cells)} combinations, {len(done)} already finished, {len(todo)} to run", flush=True)
    if args.dry_run:
        for i, cell in enumerate(cells):
            shown = {k: cell.params[k] for k in ("epochs", "lr", "batch_size", "limit_train")}
            state = f"done (run {done[i].info.run_id})" if i in done else "to run"
            print(f"  {cell.name}  {state}  {json.dumps(shown)}")
        return 0
    if not todo:
        print(f"select its runs with {sweep_filter(sweep)}")
        return 0
    spec, storage, study, created = open_study(args, client, sweep, ghash, len(cells))
    parent_id = sweep_parent(client, experiment_id, study, created, sweep, len(cells))
    print(f"sweep {sweep}: parent run {parent_id} at {ui_address(client, experiment_id, parent_id)}", flush=True)
    say = print if args.verbose else (lambda line: None)
    on_stale = workers.stale_trial_callback(client, say)
    workers.clean_up(client, study, storage, on_stale)
    queued, given_up = queue.enqueue_missing(study, spec, todo, args.retry_failed)
    if args.verbose:
        print(f"queued {queued} combinations in study {study.study_name!r}", flush=True)
    worker = GridWorker(client, experiment_id, args.experiment, study, storage, cells, sweep, data, args,
                        len(todo) - len(given_up), parent_id=parent_id)
    status = 0
    try:
        with graceful_interrupts():
            worker.work()
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; call it again to resume", file=sys.stderr)
        status = 130
    finally:
        workers.clean_up(client, study, storage, on_stale)
        failures = queue.nan_failures(study.get_trials(deepcopy=False))
        _end_parent(client, study, parent_id, interrupted=status == 130)
        stg.close_storage(storage)
    for i in given_up:
        print(f"{cells[i].name}: not run again: failed {failures[i]} times with a non-finite loss (the same "
              "settings fail the same way); give --retry-failed to try once more", flush=True)
    if status == 0 and (worker.counts.get("failed") or given_up):
        status = 1  # as bench.run: a run failed, and the sweep is not complete
    counts = ", ".join(f"{n} {k}" for k, n in worker.counts.items()) or "nothing"
    wall = time.perf_counter() - t_start
    print(f"sweep {sweep}: this process {counts} in {_duration(wall)} ({_duration(worker.seconds)} in runs); "
          f"select its runs with {sweep_filter(sweep)}")
    if worker.last_run:
        print(f"its last run here: {browse_hint(client, experiment_id, worker.last_run)}")
    return status


def _end_parent(client: MlflowClient, study: optuna.Study, parent_id: str, interrupted: bool) -> None:
    """The worker that leaves no cell running or waiting ends the parent run FINISHED; one interrupted while no
    other runs a cell, KILLED. Otherwise it stays RUNNING for the workers still at it (or the next call)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if not trials:
        client.set_terminated(parent_id, "FINISHED")
    elif interrupted and not any(t.state == TrialState.RUNNING for t in trials):
        client.set_terminated(parent_id, "KILLED")
