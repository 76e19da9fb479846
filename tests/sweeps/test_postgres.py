"""Two bench.tune workers on one study in PostgreSQL (the many-machine set-up), in a database of their own.

Needs BENCH_TEST_POSTGRES_URL (``.ci/run`` starts PostgreSQL and sets it). Skipped without it, except in CI:
there a missing server is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from bench.sweeps import storage as stg
from bench.sweeps.workers import WORKER_ATTR
from bench.tracking import names
from tests.conftest import REPO

URL = os.environ.get("BENCH_TEST_POSTGRES_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not URL and not IN_CI, reason="BENCH_TEST_POSTGRES_URL is not set (see .ci/run)"),
]


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database on the server, dropped afterwards: tests never see each other's studies."""
    assert URL, "CI must provide BENCH_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)"
    import psycopg2
    from sqlalchemy.engine import make_url

    admin = make_url(URL)
    name = f"bench_test_{uuid.uuid4().hex[:10]}"

    def execute(sql: str) -> None:
        conn = psycopg2.connect(host=admin.host, port=admin.port or 5432, user=admin.username,
                                password=admin.password, dbname=admin.database or "postgres")
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        try:
            conn.cursor().execute(sql)
        finally:
            conn.close()

    execute(f"CREATE DATABASE {name}")
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_two_workers_share_a_study_in_postgresql(tmp_path: Path, database: str) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "bench.tune", "--variant", "sgvb_b", "--latent", "5", "--epochs", "1",
           "--limit-train", "100", "--validation", "200", "--trials", "2", "--study-name", "pg",
           "--storage", database, "--tracking-uri", tracking_uri]
    workers = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    assert all("postgres:***@" in o for o in outs)  # the password stays out of the logs

    trials = optuna.load_study(study_name="pg", storage=stg.postgres_driver(database)).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("vae-bench-tune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(names.ROLE_TAG) == "study"]
    children = [r for r in runs if r.data.tags.get(names.ROLE_TAG) == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert ":***@" in parents[0].data.params["storage"]
