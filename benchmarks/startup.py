"""How long the commands take to answer (issue 17): seconds from launch to a first line, as a user sees it.

    python benchmarks/startup.py [--rounds 3] [--only help,list,run,grid,tune]

Each case runs as a fresh subprocess (``python -m ...``, one torch thread) in a temporary folder with its own
SQLite store, and is timed from ``Popen`` to the first line that matches its pattern on stdout or stderr (then
the process is killed: only the wait for the answer counts). The median of ``--rounds`` is printed with the
spread (min-max); on a shared machine compare ratios measured in one run, not absolute seconds.

Goals on a quiet 2-core machine: --help and --list < 1 s, "started run" < 3 s, grid's and tune's first line < 1 s.
"run" is the user's command (device auto). "floor" is the least it can take: importing MLflow and opening the store,
which creating the run needs (bench.run makes its run before torch loads); "torch+mlflow" is what it took when the
run was made after torch was imported (issue 17's 5.2 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["--latent", "2", "--epochs", "1", "--limit-train", "200", "--no-progress"]
CASES: dict[str, tuple[list[str], str]] = {  # name: (python's arguments, the first line that counts)
    "help": (["-m", "bench.run", "--help"], r"usage:"),
    "list": (["-m", "bench.run", "--list"], r"sgvb"),
    "run": (["-m", "bench.run", "--variant", "sgvb_b", *TINY], r"started run [0-9a-f]+"),
    "grid": (["-m", "bench.grid", "--variants", "sgvb_b", "--latents", "2", "--epochs", "1", "--limit-train", "200",
              "--seeds", "1"], r"\S"),
    "tune": (["-m", "bench.tune", "--variant", "sgvb_b", "--trials", "1", "--epochs", "1", "--limit-train", "200"],
             r"\S"),
    # The floor under "run": importing MLflow and opening the store (MLflow's SQLAlchemy store module and its ORM
    # mappers load on first use), which creating a run needs; torch loads after the run is made.
    "floor": (["-c", "from mlflow import MlflowClient; MlflowClient().search_experiments(max_results=1);"
               " print('opened')"], r"opened"),
    "torch+mlflow": (["-c", "import torch; from mlflow import MlflowClient;"
                      " MlflowClient().search_experiments(max_results=1); print('opened')"], r"opened"),
}


def first_line(args: list[str], pattern: str, folder: Path, limit: float = 300) -> float:
    """Seconds from launch to the first output line matching ``pattern`` (the process is then killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        sel.register(stream, selectors.EVENT_READ)
    buffers: dict[object, bytes] = {proc.stdout: b"", proc.stderr: b""}
    try:
        while time.perf_counter() - start < limit:
            for key, _ in sel.select(timeout=1):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buffers[key.fileobj] += chunk
                lines = buffers[key.fileobj].replace(b"\r", b"\n").split(b"\n")
                if any(re.search(pattern, line.decode(errors="replace")) for line in lines[:-1]):
                    return time.perf_counter() - start
            if not sel.get_map():
                break
        raise RuntimeError(f"{' '.join(args)}: no line matching {pattern!r}; stderr: "
                           f"{buffers[proc.stderr].decode(errors='replace')[-500:]}")
    finally:
        proc.kill()
        proc.wait()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",")]
    print(f"{cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}; "
          f"median of {args.rounds} rounds (min-max), seconds to the first line")
    with tempfile.TemporaryDirectory(prefix="vae-bench-startup-") as tmp:
        if {"run", "grid", "tune", "floor"} & set(names):
            # One store made beforehand: a user's second command, not MLflow's one-time schema creation.
            first_line(CASES["run"][0], CASES["run"][1], Path(tmp))
        for name in names:
            command, pattern = CASES[name]
            times = [first_line(command, pattern, Path(tmp)) for _ in range(args.rounds)]
            print(f"{name:<5} {statistics.median(times):6.2f} s  ({min(times):.2f}-{max(times):.2f})  "
                  f"python {' '.join(command)}", flush=True)


if __name__ == "__main__":
    main()
