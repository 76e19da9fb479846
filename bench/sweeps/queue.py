"""The grid's work queue: one Optuna trial per cell to run, in a bookkeeping study on the shared storage.

In one paragraph: MLflow says what is done (a FINISHED run whose settings, epochs target included, are the
cell's); the study only hands out what is not. Each call of bench.grid computes the cells, adopts the FINISHED
runs, fails the trials of lost workers (bench.sweeps.workers), and then, under the storage's lock, enqueues one
WAITING trial for every cell that is not done, has no trial WAITING or RUNNING, and has not failed
deterministically (a non-finite loss) MAX_NAN_FAILURES times. Then every worker pops WAITING trials (the storage's
compare-and-set turns WAITING into RUNNING for exactly one of them) and runs their cells until none is left.
A popped cell that is FINISHED in MLflow meanwhile is adopted, not trained; a worker that loses the race for the
last trial gets nothing and creates nothing (unlike ``Study.ask``, which would make a new, empty trial).

The states of a cell::

                 a call: not FINISHED in MLflow, no trial WAITING or RUNNING, < MAX_NAN_FAILURES NaN failures
      (to run) ─────────────────────────────────────────────────────► WAITING
         ▲                                                              │ pop (compare-and-set: one worker wins)
         │                                                              ▼
         │       worker lost (gone, or silent with no way to check) ◄─ RUNNING ─ run FINISHED ─► COMPLETE (done)
         │         │ FAIL, run KILLED, a new WAITING trial                │   (or a FINISHED run adopted)
         │         └──────────────────────────────────────► WAITING       ├─ NaN ──────► FAIL (deterministic)
         └──────────────────────── the next call ──────────────────────────┴─ Ctrl-C ──► FAIL (interrupted)

A COMPLETE trial's value is its run's wall seconds (for the ETA), never a test metric: the study chooses nothing.
Resumable (call again), shared (journal file, SQLite, PostgreSQL), a lost worker's cell retried, a finished cell
never run twice (every pop checks MLflow first). The lock is a file lock: it orders the calls on one machine;
calls on two machines that enqueue at the same instant may queue a cell twice, and the second trial to be popped
is then closed FAIL as surplus (user attribute bench.surplus) without training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from bench.sweeps.storage import storage_lock
from bench.sweeps.workers import WORKER_ATTR

CELL_ATTR = "cell"  # trial user attribute: the cell's index in the grid
NAME_ATTR = "name"  # trial user attribute: the cell's run name
NAN_ATTR = "bench.nan_failure"  # trial user attribute: why the cell's run failed with a non-finite loss
SURPLUS_ATTR = "bench.surplus"  # trial user attribute: the trial that runs this cell instead
MAX_NAN_FAILURES = 2  # a cell whose run fails with a non-finite loss is tried this often in all, then left
BUSY = (TrialState.WAITING, TrialState.RUNNING)


def nan_failures(trials: Iterable[FrozenTrial]) -> Counter[int]:
    return Counter(t.user_attrs[CELL_ATTR] for t in trials
                   if t.state == TrialState.FAIL and NAN_ATTR in t.user_attrs and CELL_ATTR in t.user_attrs)


def enqueue_missing(study: optuna.Study, spec: str, todo: dict[int, str], retry_failed: bool) -> tuple[int, list[int]]:
    """Enqueue a WAITING trial for each cell of ``todo`` (index -> run name) that has none WAITING or RUNNING and
    has not failed deterministically too often (unless ``retry_failed``). Returns (enqueued, cells given up)."""
    with storage_lock(spec):  # two calls starting at once on this machine must not queue a cell twice
        trials = study.get_trials(deepcopy=False)
        busy = {t.user_attrs.get(CELL_ATTR) for t in trials if t.state in BUSY}
        nan = nan_failures(trials)
        given_up = [i for i in todo if nan[i] >= MAX_NAN_FAILURES and not retry_failed and i not in busy]
        new = [i for i in todo if i not in busy and i not in given_up]
        study.add_trials(optuna.create_trial(state=TrialState.WAITING, user_attrs={CELL_ATTR: i, NAME_ATTR: todo[i]})
                         for i in new)
    return len(new), given_up


def pop(study: optuna.Study, storage: BaseStorage) -> tuple[int, FrozenTrial] | None:
    """A WAITING trial of the study turned RUNNING for this worker (its storage id and itself), or None when none
    is left. The same compare-and-set as Optuna's own queue (``Study.ask``), without making a trial when the
    queue is empty; on SQLite under the storage's file lock (cas_lock)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    with cas_lock(storage):
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    return trial_id, storage.get_trial(trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    return None


def cas_lock(storage: BaseStorage) -> AbstractContextManager[object]:
    """What makes Optuna's compare-and-set (WAITING -> RUNNING) atomic. On SQLite it is not: its ``SELECT ... FOR
    UPDATE`` locks nothing there, and Python's sqlite3 reads outside a transaction, so two workers can both read
    WAITING and both write RUNNING (seen: two winners of one trial in tests/sweeps/test_queue.py). A SQLite file
    is local to one machine, so the file lock beside it orders every worker of it. PostgreSQL's row lock and the
    journal file's own lock need nothing more."""
    url = getattr(storage, "url", "")
    if isinstance(storage, optuna.storages.RDBStorage) and str(url).startswith("sqlite"):
        return storage_lock(str(url))
    return nullcontext()


def runner_of(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """An earlier trial RUNNING this trial's cell, if there is one: then this trial is surplus (enqueued twice
    by calls on two machines at once). A COMPLETE one does not count: MLflow, checked next, says if it is done."""
    cell = trial.user_attrs.get(CELL_ATTR)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number < trial.number and t.user_attrs.get(CELL_ATTR) == cell:
            return t.number
    return None


def progress(study: optuna.Study) -> tuple[int, float | None, int]:
    """(trials still waiting, mean seconds of the runs completed so far or None, workers running a trial)."""
    trials = study.get_trials(deepcopy=False)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    seconds = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value]
    running = len({t.user_attrs.get(WORKER_ATTR) for t in trials if t.state == TrialState.RUNNING})
    return waiting, (sum(seconds) / len(seconds) if seconds else None), running
