"""A command ends quietly however it ends early (issue 17): a failed start-up is one line on stderr and nothing
after it (the traceback of a thread that was still importing used to follow it), and a closed stdout
(``... | head -n 1``) ends it without a BrokenPipeError. Real subprocesses: process exit is what is tested."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CODE, REPO


def test_a_failed_start_up_is_exactly_one_line_when_launched_many_times_at_once(tmp_path: Path) -> None:
    """The real command, as the flaky tests launched it: bench.run on a damaged store, several at once. (The
    flake was a daemon thread prewarming torch._dynamo, torn down mid-import by the exit; it is gone: it saved
    0.1-0.5 s of an 8 s run and cost 1.2 s of CPU in every start-up that failed.)"""
    db = tmp_path / "bad.db"
    db.write_bytes(b"garbage!" * 2048)
    env = {**os.environ, **CODE, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.run", "--latent", "2", "--epochs", "1",
                               "--no-progress", "--tracking-uri", f"sqlite:///{db}"], cwd=tmp_path, env=env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2 and len(err.splitlines()) == 1 and "bad.db" in err, (p.returncode, err)


def test_a_closed_stdout_ends_every_kind_of_command_quietly() -> None:
    """``python -m ... | head -n 1`` whose reader has gone before the command writes: a real pipe, its read end
    closed, so the first write gets EPIPE (Python ignores SIGPIPE). Started together: they spend their time
    importing."""
    r, w = os.pipe()
    os.close(r)
    cases = [("bench.run", "--list"), ("bench.evaluate", "--help"), ("bench.grid", "--help"), ("bench.report", "-h")]
    try:
        procs = [subprocess.Popen([sys.executable, "-m", *case], stdout=w, stderr=subprocess.PIPE, text=True,
                                  cwd=REPO, env={**os.environ, **CODE}) for case in cases]
    finally:
        os.close(w)
    for case, p in zip(cases, procs, strict=True):
        _, err = p.communicate(timeout=300)
        assert err == "" and p.returncode in (0, 141), (case, p.returncode, err)  # argparse drops OSError itself
