"""What tracking adds to an epoch, call by call (python benchmarks/tracking_cost.py).

An epoch of bench.training.loop.train makes these tracker calls: two image grids (log_artifact), the checkpoint
(the seed's model and its Adam state, 7.8 MB; save_checkpoint) and one batch of metrics (log_metrics). This script
makes the same calls on a real SQLite store in a temporary folder and times each, median of --repeats calls, in
interleaved rounds. For comparison it times MlflowClient.log_artifact too, which looks the run up in the store on
every call (MLflow's run-id cache is off here: bench.tracking.artifacts), where the tracker resolves its run's
artifact folder once. speed.py prices tracking as a whole ("cost of tracking"); this says where it goes.

    python benchmarks/tracking_cost.py [--repeats 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bench, installed or not

from bench.core.config import TrainConfig  # noqa: E402
from bench.evaluation.images import save_grids  # noqa: E402
from bench.tracking.mlflow_tracker import MlflowTracker  # noqa: E402
from bench.tracking.store import open_store  # noqa: E402
from bench.training.loop import build  # noqa: E402
from variants import get_variant  # noqa: E402

METRICS = 12  # about as many as an epoch logs (train and test loss, recon, kld, seconds, samples per second)


def calls(folder: Path) -> dict[str, Callable[[int], None]]:
    """The epoch's tracker calls on a fresh run in a fresh store under ``folder``, each a function of the epoch."""
    client = open_store(f"sqlite:///{folder / 'mlflow.db'}")
    cfg = TrainConfig()
    tracker = MlflowTracker.start(client, "tracking-cost", "run", cfg.params())
    model, opt = build(get_variant("sgvb_b"), cfg)
    for p in model.parameters():  # one step, so that the checkpoint holds Adam's moments as a run's does
        p.grad = torch.zeros_like(p)
    opt.step()
    grids = save_grids(model, torch.rand(8, 784), 1, folder, seed=1)
    metrics = {f"metric_{k}": float(k) for k in range(METRICS)}

    def grids_by_tracker(_: int) -> None:
        for path in grids:
            tracker.log_artifact(path, "images")

    def grids_by_client(_: int) -> None:
        for path in grids:
            client.log_artifact(tracker.run_id, str(path), "images-client")

    def checkpoint(epoch: int) -> None:
        tracker.save_checkpoint({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "metrics": metrics})

    return {"log_artifact, two image grids": grids_by_tracker, "save_checkpoint": checkpoint,
            "log_metrics": lambda epoch: tracker.log_metrics(metrics, step=epoch),
            "MlflowClient.log_artifact, two image grids": grids_by_client}


def measure(repeats: int, rounds: int) -> list[list[str]]:
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vae-bench-tracking-cost-") as tmp:
        contenders = calls(Path(tmp))
        epoch = 0
        for call in contenders.values():  # warm-up: imports, the first lookup, the file system's caches
            epoch += 1
            call(epoch)
        for _ in range(rounds):
            for name, call in contenders.items():
                for _ in range(repeats):
                    epoch += 1
                    t0 = time.perf_counter()
                    call(epoch)
                    times.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
    per_epoch = [n for n in times if not n.startswith("MlflowClient")]
    rows = [[n, f"{statistics.median(t):.1f}", f"{min(t):.1f}-{max(t):.1f}"] for n, t in times.items()]
    rows.insert(len(per_epoch), ["an epoch's tracking (the three above)",
                                 f"{sum(statistics.median(times[n]) for n in per_epoch):.1f}", ""])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats * args.rounds} "
          "calls each, interleaved")
    print(tabulate(measure(args.repeats, args.rounds), headers=["call", "ms (median)", "range"],
                   tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
