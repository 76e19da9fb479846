"""Four grid workers race for the last waiting trial of a SQLite Optuna storage, N rounds: how many rounds had more
than one winner (a cell trained twice). ``unlocked`` replays Optuna's bare compare-and-set (what bench.sweeps.queue
did before cas_lock), ``locked`` the queue as it is.

    python scripts/queue_race.py [--rounds 6] [unlocked] [locked]

Measured 2026-12-03 on an AMD EPYC (2 cores): unlocked 3 of 6 rounds had two winners, locked 0 of 6.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

POP = """
import sys, time
from contextlib import nullcontext
import optuna
sys.path.insert(0, sys.argv[4])
from bench.sweeps import queue, storage as stg
if sys.argv[3] == "unlocked":
    queue.cas_lock = lambda storage: nullcontext()
storage = stg.open_storage(sys.argv[1])
study = optuna.load_study(study_name="q", storage=storage)
while time.time() < float(sys.argv[2]):  # start together
    time.sleep(0.001)
print("won" if queue.pop(study, storage) else "none")
"""


def rounds_with_two_winners(mode: str, rounds: int) -> int:
    import optuna

    from bench.sweeps import queue
    from bench.sweeps import storage as stg

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    doubled = 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            spec = f"sqlite:///{d}/optuna.db"
            study = optuna.create_study(study_name="q", storage=stg.open_storage(spec))
            queue.enqueue_missing(study, spec, {0: "cell-0"}, retry_failed=False)
            start = time.time() + 5  # after every racer's imports
            procs = [subprocess.Popen([sys.executable, "-c", POP, spec, str(start), mode, str(REPO)],
                                      stdout=subprocess.PIPE, text=True) for _ in range(4)]
            wins = sum(p.communicate(timeout=300)[0].strip().endswith("won") for p in procs)
            doubled += wins > 1
    return doubled


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modes", nargs="*", default=["unlocked", "locked"], choices=["unlocked", "locked"])
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    for mode in args.modes:
        print(f"{mode}: {rounds_with_two_winners(mode, args.rounds)} of {args.rounds} rounds had more than one winner",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
