"""Shared fixtures: the real bundled MNIST (loaded once), real SQLite MLflow stores in temp folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from bench.cli import quiet_libraries
from bench.core.data import MNIST, load_mnist

REPO = Path(__file__).resolve().parent.parent
# Child processes run this tree's code, whatever their working directory (an editable install may point elsewhere).
CODE = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

quiet_libraries()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: half as many workers again as CPUs. Many tests wait on other processes (SQLite's busy
    timeout, heartbeats, a line before a signal), and the extra worker fills those waits: the suite took 298 s
    with 3 workers against 327 s with 2 on a 2-core machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return -(-3 * cpus // 2)


# The modules that take longest (``--durations=0``, summed per module, on a 2-core machine), longest first: handed
# to the workers first, so that the suite does not end with one worker finishing a long module alone. A module
# not named here runs after them, in collection order.
LONGEST_FIRST = ("commands/test_lifecycle.py", "training/test_compiled_step.py", "plugins/test_plugins.py",
                 "reporting/test_report.py",
                 "sweeps/test_liveness.py", "tracking/test_locks.py", "commands/test_cli.py",
                 "evaluation/test_snr.py", "sweeps/test_tune.py", "training/test_resume.py",
                 "evaluation/test_evaluate.py", "reporting/test_paired_report.py", "tracking/test_tracking.py",
                 "sweeps/test_studies.py", "sweeps/test_grid.py", "tracking/test_ownership.py",
                 "evaluation/test_likelihood_cli.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module's tests keep their order


if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs about one worker per core: one torch thread in each, and in every process its tests start
    # (a second thread would only contend with the other workers).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist() -> MNIST:
    return load_mnist()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of small tensors: faster on a shared 2-core machine, and the same
    reduction order in every run. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, made once: MLflow creates and migrates its schema (seconds of CPU) here
    and not in every test. Creating a store from nothing is tested in test_tracking."""
    db = tmp_path_factory.mktemp("migrated-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def copy_store(migrated_store: Path, folder: Path) -> str:
    """A copy of the migrated empty store in ``folder``; returns its tracking URI."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_store, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def tracking_uri(tmp_path: Path, migrated_store: Path) -> str:
    """A fresh, real SQLite MLflow store in a temporary folder (a copy of the migrated empty one)."""
    return copy_store(migrated_store, tmp_path)


def run_cli(module: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` as a user would; returns the finished process (never raises on exit code)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **CODE, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def train_one(folder: Path, *args: str) -> tuple[str, str]:
    """One real bench.run run (in this process, on the CPU) into a new SQLite store in ``folder``: (uri, run id)."""
    from bench.run import main as run_main

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert run_main([*args, "--device", "cpu", "--tracking-uri", uri, "--no-progress"]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs(client.search_experiments()[0].experiment_id)
    (run,) = [r for r in runs if "bench.analysis" not in r.data.tags]  # not its analysis runs (--snr-every)
    return uri, run.info.run_id
