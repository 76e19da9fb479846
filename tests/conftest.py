"""Shared fixtures: the real bundled MNIST (loaded once), real SQLite MLflow stores in temp folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import quiet_libraries
from bench.data import MNIST, load_mnist

REPO = Path(__file__).resolve().parent.parent

quiet_libraries()


@pytest.fixture(scope="session")
def mnist() -> MNIST:
    return load_mnist()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh, real SQLite MLflow store in a temporary folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_cli(module: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` as a user would; returns the finished process (never raises on exit code)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
