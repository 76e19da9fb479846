"""What a tune or grid worker process does around its trials: quiet libraries, the store and data opened in
parallel, and stopwatches (the quick exit is bench.cli.exit_process)."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import optuna
from mlflow import MlflowClient

from bench.core.data import MNIST, load_mnist
from bench.tracking.store import get_or_create_experiment, open_store


def quiet_optuna() -> None:
    """Optuna's INFO lines and experimental-feature warnings off: our own line per trial says what happened."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@contextlib.contextmanager
def stopwatch(totals: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        totals[key] = totals.get(key, 0.0) + time.perf_counter() - t0


def open_store_and_data(tracking_uri: str | None, experiment: str,
                        data_dir: str | None) -> tuple[MlflowClient, str, MNIST]:
    """The MLflow client, the experiment's id and MNIST, for a tune or grid worker."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Decompressing and checksumming MNIST releases the GIL: it overlaps with opening the MLflow store.
        loading = pool.submit(load_mnist, data_dir)
        client = open_store(tracking_uri)
        experiment_id = get_or_create_experiment(client, experiment)
        return client, experiment_id, loading.result()
