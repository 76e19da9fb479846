"""optuna-dashboard, served on 127.0.0.1 from the storages that bench.tune and bench.grid wrote: the tuning storage
lists the tuning study alone (its objective named, its best value to 0.001 nats); the grid's bookkeeping study is in
a storage of its own, labelled as such, its values to 0.1 s."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import optuna_dashboard
import pytest

from bench import grid, tune
from bench.sweeps import storage as stg
from bench.sweeps.grid import METRIC

pytestmark = pytest.mark.usefixtures("one_thread")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _serve(spec: str) -> Iterator[str]:
    storage = stg.open_storage(spec)
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        stg.close_storage(storage)


@pytest.fixture
def stores(tmp_path: Path, tracking_uri: str) -> str:
    small = ["--epochs", "1", "--limit-train", "100", "--tracking-uri", tracking_uri]
    assert tune.main(["--variant", "sgvb_b", "--latent", "2", "--validation", "200", "--trials", "2", *small]) == 0
    assert grid.main(["--variants", "sgvb_a,sgvb_b", "--latents", "2", "--no-progress", *small]) == 0
    return tracking_uri


@pytest.fixture
def dashboard(stores: str) -> Iterator[str]:
    yield from _serve(stg.default_storage(stores))  # optuna.db beside the store: what the README opens


@pytest.fixture
def queue_dashboard(stores: str) -> Iterator[str]:
    yield from _serve(stg.default_storage(stores, stg.GRID_STORAGE))


def _get(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=30) as response:
        return json.load(response)


def _studies(dashboard: str) -> dict[str, Any]:
    summaries = {s["study_name"]: s for s in _get(f"{dashboard}/api/studies")["study_summaries"]}
    return {name: _get(f"{dashboard}/api/studies/{s['study_id']}?after=0") for name, s in summaries.items()}


def test_the_dashboard_lists_the_tuning_study_alone_with_its_unit_and_a_rounded_best(dashboard: str) -> None:
    studies = _studies(dashboard)
    assert list(studies) == ["tune-sgvb_b-z2-e1-n100"]  # no bookkeeping study, so no meaningless Best Trial
    tuning = studies["tune-sgvb_b-z2-e1-n100"]
    assert tuning["objective_names"] == ["val_loss in nats"] and len(tuning["trials"]) == 2
    (best,) = tuning["best_trials"]  # the card prints best["values"] as they are stored
    attrs = {a["key"]: a["value"] for a in tuning["user_attrs"]}  # shown beside the card
    assert "nats per image" in attrs["bench.objective"]
    assert best["values"] == [round(best["values"][0], 3)]


def test_the_grid_queue_is_in_its_own_storage_labelled_as_bookkeeping(queue_dashboard: str) -> None:
    (name, bookkeeping), = _studies(queue_dashboard).items()
    assert name.startswith("bench.grid bookkeeping")
    # never a test metric: nothing is chosen on test data; the unit and "not a best" are in its name
    assert bookkeeping["objective_names"] == [METRIC] and "in s" in METRIC and "not a best" in METRIC
    assert sorted(a["value"] for t in bookkeeping["trials"] for a in t["user_attrs"] if a["key"] == "name") == [
        "sgvb_a-z2-L1-s1", "sgvb_b-z2-L1-s1"]
    assert all(t["values"] == [round(t["values"][0], 1)] for t in bookkeeping["trials"])  # seconds to 0.1 s
    assert all(not t["params"] for t in bookkeeping["trials"])  # no "cell" parameter with an importance
    attrs = {a["key"]: a["value"] for a in bookkeeping["user_attrs"]}
    assert "bookkeeping of bench.grid" in attrs["bench.settings"] and "not a best model" in attrs["bench.objective"]


def test_a_sweep_whose_queue_is_in_optuna_db_keeps_it_there(tmp_path: Path) -> None:
    """A sweep started before the queue had a file of its own: its later calls find its study (and parent run)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert stg.grid_storage(uri, "bench.grid bookkeeping old") == f"sqlite:///{tmp_path / 'grid-queue.db'}"
    optuna.create_study(study_name="bench.grid bookkeeping old", storage=stg.default_storage(uri))
    assert stg.grid_storage(uri, "bench.grid bookkeeping old") == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert stg.grid_storage(uri, "bench.grid bookkeeping new") == f"sqlite:///{tmp_path / 'grid-queue.db'}"
