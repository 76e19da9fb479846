"""A run id that is not in the store and a store that fails are different errors, each one line and exit 2."""

from __future__ import annotations

import sqlite3

import pytest

from bench import evaluate, run
from bench.cli import main_guard

RUN_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("command, args", [(run, ["--resume", RUN_ID]), (evaluate, ["--run-id", RUN_ID])])
def test_no_such_run_and_a_failing_store_are_told_apart(tracking_uri: str, capsys, command, args) -> None:
    assert main_guard(command.main, command.PROG)([*args, "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"no run with id '{RUN_ID}'" in err[-1]

    con = sqlite3.connect(tracking_uri[len("sqlite:///"):])
    con.execute("ALTER TABLE runs RENAME TO runs_elsewhere")  # the store is broken, not the id wrong
    con.commit()
    con.close()
    assert main_guard(command.main, command.PROG)([*args, "--tracking-uri", tracking_uri]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no run with id" not in last and "Traceback" not in last
    assert f"failed to look up run '{RUN_ID}'" in last and "no such table: runs" in last
