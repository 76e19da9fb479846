"""optuna-dashboard, served on 127.0.0.1 from the storage that bench.tune and bench.grid wrote, shows the tuning
study with its objective named and the grid's bookkeeping study labelled as such, with their trials."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna_dashboard
import pytest

from bench import grid, tune
from bench.sweeps import storage as stg
from bench.sweeps.grid import METRIC

pytestmark = pytest.mark.usefixtures("one_thread")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def dashboard(tmp_path: Path, tracking_uri: str) -> Iterator[str]:
    small = ["--epochs", "1", "--limit-train", "100", "--tracking-uri", tracking_uri]
    assert tune.main(["--variant", "sgvb_b", "--latent", "2", "--validation", "200", "--trials", "2", *small]) == 0
    assert grid.main(["--variants", "sgvb_a,sgvb_b", "--latents", "2", "--no-progress", *small]) == 0
    storage = stg.open_storage(stg.default_storage(tracking_uri))  # both wrote to optuna.db beside the store
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        stg.close_storage(storage)


def _get(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=30) as response:
        return json.load(response)


def test_the_dashboard_shows_the_studies_and_their_trials(dashboard: str) -> None:
    summaries = {s["study_name"]: s for s in _get(f"{dashboard}/api/studies")["study_summaries"]}
    assert len(summaries) == 2 and "tune-sgvb_b-z2-e1-n100" in summaries
    studies = {name: _get(f"{dashboard}/api/studies/{s['study_id']}?after=0") for name, s in summaries.items()}
    tuning = studies["tune-sgvb_b-z2-e1-n100"]
    assert tuning["objective_names"] == ["val_loss"] and len(tuning["trials"]) == 2
    (bookkeeping,) = [s for n, s in studies.items() if n.startswith("bench.grid bookkeeping")]
    # never a test metric: nothing is chosen on test data; the unit and "not a best model" are in its name
    assert bookkeeping["objective_names"] == [METRIC] and "in s" in METRIC and "not a best" in METRIC
    assert sorted(a["value"] for t in bookkeeping["trials"] for a in t["user_attrs"] if a["key"] == "name") == [
        "sgvb_a-z2-L1-s1", "sgvb_b-z2-L1-s1"]
    assert all(not t["params"] for t in bookkeeping["trials"])  # no "cell" parameter with an importance
    settings = {a["key"]: a["value"] for a in bookkeeping["user_attrs"]}["bench.settings"]
    assert "bookkeeping of bench.grid" in settings
