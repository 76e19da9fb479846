"""A real MLflow SQLite store for each test, copied from one made once per module: the store a user gets,
without paying MLflow's schema migration (a few seconds) in every test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient


def make_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("template-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # creates and migrates the schema
    return db


def copy_store(template: Path, folder: Path) -> str:
    shutil.copy(template, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"
