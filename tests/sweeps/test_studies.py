"""Workers agreeing on a study's settings, on real storages (journal file, SQLite) and real processes: only the
study's creator writes them, every other worker compares, however slow the creator is."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from bench.sweeps import storage as stg
from bench.sweeps import studies
from tests.conftest import REPO

JOIN = """
import json, sys
from bench.errors import UserError
from bench.sweeps import storage as stg, studies
spec, settings = sys.argv[1], json.loads(sys.argv[2])
import optuna
study, created = stg.create_or_load("s", stg.open_storage(spec), optuna.samplers.RandomSampler())
try:
    studies.agree_settings(study, settings, created, "another name")
    print("created" if created else "joined")
except UserError as e:
    print("refused:", e)
"""


def _start(spec: str, settings: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", JOIN, spec, json.dumps(settings)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_racing_workers_with_two_settings_agree_on_the_creators(tmp_path: Path, kind: str) -> None:
    spec = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    stg.open_storage(spec)  # the storage exists; the study does not: the four race to create it
    procs = [_start(spec, {"epochs": e}) for e in (1, 2, 1, 2)]
    outs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
    (creator,) = [i for i, o in enumerate(outs) if o == "created"]
    mine = 1 if creator % 2 == 0 else 2
    for i, out in enumerate(outs):
        if i != creator:
            assert out == "joined" if (1 if i % 2 == 0 else 2) == mine else out.startswith("refused:"), outs
    study = optuna.load_study(study_name="s", storage=stg.open_storage(spec))
    assert study.user_attrs[studies.SETTINGS_ATTR] == {"epochs": mine}


def test_a_worker_waiting_for_a_slow_creator_never_writes_its_own_settings(tmp_path: Path) -> None:
    """The defect: a worker that waited 10 s wrote its own settings and went on; the slow creator then wrote
    others and went on too."""
    spec = str(tmp_path / "s.journal")
    storage = stg.open_storage(spec)
    study = optuna.create_study(study_name="s", storage=storage)  # the creator, not yet done writing
    joiner = _start(spec, {"epochs": 2})
    time.sleep(11)
    assert joiner.poll() is None  # still waiting for the creator
    studies.agree_settings(study, {"epochs": 1}, True, "")
    out = joiner.communicate(timeout=60)[0]
    assert "refused: study 's' was made with other settings: epochs=1 (here 2)" in out
    assert study.user_attrs[studies.SETTINGS_ATTR] == {"epochs": 1}


def test_a_study_whose_creator_never_wrote_its_settings_is_named(tmp_path: Path) -> None:
    storage = stg.open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(study_name="s", storage=storage)
    with pytest.raises(Exception, match="stopped before writing it; delete the study"):
        studies.agree_settings(study, {"epochs": 1}, False, "", wait=0.5)
