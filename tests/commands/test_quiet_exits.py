"""A command ends quietly however it ends early (issue 17): a failed start-up is one line on stderr and nothing
after it (no traceback of the prewarm thread that was importing torch._dynamo meanwhile), and a closed stdout
(``... | head -n 1``) ends it without a BrokenPipeError. Real subprocesses: process exit is what is tested."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import CODE, REPO


def python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **CODE, "PYTHONPATH": f"{cwd}{os.pathsep}{CODE['PYTHONPATH']}", **env},
                          timeout=120)


def test_a_prewarm_import_that_fails_while_the_process_exits_prints_nothing(tmp_path: Path) -> None:
    """Deterministic form of the 1-in-27 race: the prewarmed import fails during the exit (under an atexit
    callback, as MLflow's and torch's are), and once while the main thread still runs."""
    (tmp_path / "slow_boom.py").write_text("import time\ntime.sleep(0.3)\nraise RuntimeError('torn down')\n")
    during_exit = python("""
        import atexit, sys, time
        from bench.cli import exit_process
        from bench.training.lifecycle import prewarm
        atexit.register(time.sleep, 0.8)  # the thread's import fails while this runs
        prewarm("slow_boom")
        print("prog: error: the one line", file=sys.stderr)
        exit_process(2)
    """, tmp_path)
    assert (during_exit.returncode, during_exit.stderr) == (2, "prog: error: the one line\n")
    while_running = python("""
        import time
        from bench.training.lifecycle import prewarm
        prewarm("slow_boom")
        time.sleep(0.8)
    """, tmp_path)
    assert (while_running.returncode, while_running.stderr) == (0, "")


def test_a_failed_start_up_is_exactly_one_line_when_launched_many_times_at_once(tmp_path: Path) -> None:
    """The real command, as the flaky tests launched it: bench.run on a damaged store, several at once, so that
    the prewarm thread is at every point of its import when the one-line error ends the process."""
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
