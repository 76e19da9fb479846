"""How much of a bench.tune study's wall time is spent outside the training loop (start-up, Optuna, MLflow).

    python benchmarks/tune_overhead.py [--trials 20] [--epochs 3] [--limit-train 10000]

Runs one worker as a user would (``python -m bench.tune`` in a fresh process, on an MLflow SQLite store that
exists already), times it from outside, and takes the training-loop seconds from its last line. A second run
with --trials 0 gives the fixed cost (start-up, stores, data, parent run); the rest is per trial.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient


def worker(args: list[str]) -> tuple[float, float, float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench.tune", "--verbose", *args], capture_output=True, text=True,
                         check=True)
    wall = time.perf_counter() - t0
    last = next((x for x in reversed(out.stdout.splitlines()) if "in the training loop" in x), "")
    m = re.search(r"([\d.]+) s of it in the training loop \(tracking calls ([\d.]+) s", last)
    assert m, out.stdout[-2000:] + out.stderr[-2000:]
    return wall, float(m.group(1)), float(m.group(2)), last


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--validation", type=int, default=10000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        MlflowClient(uri).search_experiments()  # the store exists, as it does after a user's first run
        common = ["--variant", "sgvb_b", "--latent", "20", "--epochs", str(a.epochs), "--limit-train",
                  str(a.limit_train), "--validation", str(a.validation), "--tracking-uri", uri]
        fixed, _, _, _ = worker([*common, "--study-name", "fixed", "--trials", "0"])
        wall, train, tracking, last = worker([*common, "--study-name", "study", "--trials", str(a.trials)])
    outside = wall - train
    print(last)
    print(f"{a.trials} trials ({train / a.trials:.1f} s of training each on average): wall {wall:.1f} s, "
          f"training loop {train:.1f} s, outside it {outside:.1f} s = {100 * outside / wall:.1f}% of the wall time")
    print(f"  fixed (a --trials 0 worker: start-up, stores, data, parent run): {fixed:.1f} s; "
          f"per trial outside the loop: {(outside - fixed) / a.trials:.2f} s (incl. the end's plots); "
          f"tracking calls inside the loop: {tracking:.1f} s = {100 * tracking / wall:.1f}%")


if __name__ == "__main__":
    main()
