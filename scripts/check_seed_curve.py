"""Train the seed's run (sgvb_b, latent 20, 10 epochs, seed 1, the full training set) and check its curve against the
bands recorded for pytorch/examples (ANCHORS.md; bench.reporting.anchors.SEED_POINTS): the training loss at epochs 1
and 10, and the test loss at epochs 1 and 10. No MLflow: the harness with an in-memory tracker.

    python scripts/check_seed_curve.py [--precision fp32|bf16] [--threads N] [--compile]

Prints one line per point (value, band, in or out) and the seconds per epoch; exits 1 if a point is out of its band.
The bands are narrower than the spread over seeds and float orders: scripts/seed_curve_spread.py measures it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.core.config import PRECISIONS, TrainConfig  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402
from bench.reporting.anchors import SEED_POINTS  # noqa: E402
from bench.tracking.tracker import MemoryTracker  # noqa: E402
from bench.training.loop import train  # noqa: E402
from variants import get_variant  # noqa: E402

POINTS = [("train_loss", 1), ("test_loss", 1), ("train_loss", 10), ("test_loss", 10)]


def band(metric: str, epoch: int) -> tuple[float, float]:
    low, high = SEED_POINTS[(metric, epoch)][1].replace("\u2013", "-").split("-")
    return float(low), float(high)


def check(history: list[dict[str, float]]) -> list[tuple[str, int, float, tuple[float, float], bool]]:
    """(metric, epoch, value, band, inside) for each checked point; a value is inside when it rounds (to 2 decimals,
    as the bands are written) into its band."""
    out = []
    for metric, epoch in POINTS:
        value = history[epoch - 1][metric]
        lo, hi = band(metric, epoch)
        out.append((metric, epoch, value, (lo, hi), lo <= round(value, 2) <= hi))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="the compiled step (bench.run --compile)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(latent=20, epochs=10, seed=1, precision=args.precision, compile=args.compile)
    t0 = time.perf_counter()
    tracker = MemoryTracker()
    result = train(get_variant("sgvb_b"), cfg, load_mnist(), tracker)
    seconds = [h["epoch_seconds"] for h in result.history]
    how = f"precision {args.precision}{', compiled' if args.compile else ''}"
    print(f"{how}; {time.perf_counter() - t0:.1f} s; epoch seconds: first {seconds[0]:.2f}, "
          f"median {statistics.median(seconds):.2f}, mean {statistics.mean(seconds):.2f}")
    ok = True
    for metric, epoch, value, (lo, hi), inside in check(result.history):
        ok &= inside
        print(f"{metric} epoch {epoch}: {value:.2f} (band {lo}-{hi}): {'in' if inside else 'OUT'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
