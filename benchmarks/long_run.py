"""Seconds per epoch over a whole run, with and without the two CPU fixes of issue 21 that speed.py cannot see.

    python benchmarks/long_run.py                      # 2 rounds x 4 settings x 10 epochs: about 5 minutes on 2 cores
    python benchmarks/long_run.py --epochs 4 --rounds 1

speed.py times the first epoch of fresh runs. Two costs only show over a run:
- page faults (bench.core.allocator): glibc hands the step's freed blocks back to the kernel, and the next step's
  tensors fault in fresh zeroed pages, from the first epoch on;
- subnormals (bench.training.adam, FLUSH_EVERY): Adam's first moments of weights whose gradient has stopped decay
  below float32's least normal number from about the third epoch on, and every multiply on them is slow.

Each setting (allocator kept / glibc defaults x flush on / off) trains the seed's configuration (sgvb_b, latent 20,
untracked, the test pass each epoch) in a fresh process, the settings interleaved per round so that a noisy machine
slows all alike. It prints every epoch's seconds, the mean over the run, the first two epochs' mean against the rest,
and the final test and train losses, which must be identical across settings and rounds: neither fix changes a number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
SETTINGS = [("kept", "on"), ("system", "on"), ("kept", "off"), ("system", "off")]  # (malloc, flush)


def child(epochs: int, flush: str, threads: int | None) -> None:
    """One run in this process; prints its epochs' seconds and final losses as one JSON line."""
    sys.path.insert(0, str(REPO))  # this checkout's bench, installed or not
    import torch

    import bench.training.adam as adam
    from bench.cli import quiet_libraries
    from bench.core.config import TrainConfig
    from bench.core.data import load_mnist
    from bench.training.loop import train
    from variants.registry import get_variant

    quiet_libraries()
    if threads:
        torch.set_num_threads(threads)
    if flush == "off":
        adam.FLUSH_EVERY = 1 << 62  # never reached: torch.optim's behaviour, subnormals kept
    result = train(get_variant("sgvb_b"), TrainConfig(epochs=epochs), load_mnist(), log=lambda _: None)
    print(json.dumps({"seconds": [h["epoch_seconds"] for h in result.history],
                      "test_loss": result.history[-1]["test_loss"], "train_loss": result.history[-1]["train_loss"]}))


def run_setting(malloc: str, flush: str, epochs: int, threads: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VAE_BENCH_MALLOC"}
    if malloc == "system":
        env["VAE_BENCH_MALLOC"] = "system"
    cmd = [sys.executable, __file__, "--child", "--flush", flush, "--epochs", str(epochs)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"long_run.py: the run with malloc={malloc}, flush={flush} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the four settings")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--flush", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.epochs, args.flush, args.threads)
        return
    if args.epochs < 3:
        sys.exit("long_run.py: --epochs must be at least 3 (subnormals appear from about the third epoch)")
    runs: dict[tuple[str, str], list[dict]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for malloc, flush in SETTINGS:
            out = run_setting(malloc, flush, args.epochs, args.threads)
            runs[(malloc, flush)].append(out)
            print(f"round {r + 1}: malloc {malloc}, flush {flush}: " + " ".join(f"{s:.2f}" for s in out["seconds"]),
                  flush=True)
    base = statistics.median(statistics.mean(o["seconds"]) for o in runs[("system", "off")])
    rows = []
    for (malloc, flush), outs in runs.items():
        mean = statistics.median(statistics.mean(o["seconds"]) for o in outs)
        early = statistics.median(statistics.mean(o["seconds"][:2]) for o in outs)
        late = statistics.median(statistics.mean(o["seconds"][2:]) for o in outs)
        rows.append([f"malloc {'kept (default)' if malloc == 'kept' else 'glibc defaults'}, flush {flush}",
                     f"{mean:.2f}", f"{mean / base:.2f}x", f"{early:.2f}", f"{late:.2f}"])
    print(f"\nmedian over {args.rounds} round(s) of each run's mean seconds per epoch ({args.epochs} epochs):")
    print(tabulate(rows, headers=["setting", "s/epoch", "vs neither fix", "epochs 1-2", f"epochs 3-{args.epochs}"],
                   tablefmt="github"))
    finals = {(o["test_loss"], o["train_loss"]) for outs in runs.values() for o in outs}
    print(f"final (test, train) loss across all {sum(map(len, runs.values()))} runs: "
          + "; ".join(f"({t!r}, {tr!r})" for t, tr in sorted(finals)))
    if len(finals) > 1:
        print("long_run.py: the runs' final losses differ (see above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
