"""How far the seed's curve spreads over seeds and float orders on this machine, for the harness and for the seed's
own loop: the yardstick for check_seed_curve.py's bands (ANCHORS.md: "recorded elsewhere" for pytorch/examples).

    python scripts/seed_curve_spread.py --seeds 1-10 --reference-seeds 1-10       # about 14 minutes
    python scripts/seed_curve_spread.py --seeds 1-6 --reference-seeds 1-3 --threads 2,1 --precision fp32,bf16
    python scripts/seed_curve_spread.py --seeds 1-10 --step eager,compiled      # --compile against eager

Each run is the seed's configuration (784-400-20, Bernoulli, estimator B, L=1, Adam 1e-3, batch 128, 10 epochs):
the harness through bench.training.loop.train (in-memory tracker), the reference through benchmarks/speed.py's
classic loop (the seed's code: torchvision MNIST + DataLoader, seeded with torch.manual_seed). Prints one line per
run, then, for the first thread count and precision, per checked point: the band, each side's mean with its 95%
t-interval and sd, how many runs round into the band, and the harness minus the reference (Welch interval).
Several thread counts (which change the order of the GEMMs' sums), precisions or steps (eager, or compiled as
bench.run --compile does) run every seed in each, and a second table gives each configuration minus the first, seed
by seed: what float order, bf16 or the compiled step alone does to a 10-epoch curve. About 20 s per harness run
and 60 s per reference run on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import torch  # noqa: E402
from check_seed_curve import POINTS, band  # noqa: E402
from speed import classic_contender  # noqa: E402
from tabulate import tabulate  # noqa: E402

from bench.core.config import PRECISIONS, TrainConfig  # noqa: E402
from bench.core.data import MNIST, load_mnist  # noqa: E402
from bench.reporting.stats import paired_t  # noqa: E402
from bench.tracking.tracker import MemoryTracker  # noqa: E402
from bench.training.loop import train  # noqa: E402
from variants import get_variant  # noqa: E402

EPOCHS = 10


def int_list(text: str) -> list[int]:
    """'1-5' or '1,3,4' or '' -> the integers."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


STEPS = ("eager", "compiled")


def harness_curve(seed: int, precision: str, data: MNIST, step: str = "eager") -> list[dict[str, float]]:
    cfg = TrainConfig(latent=20, epochs=EPOCHS, seed=seed, precision=precision, compile=step == "compiled")
    return train(get_variant("sgvb_b"), cfg, data, MemoryTracker(), log=lambda _line: None).history


def reference_curve(seed: int, epochs: int = EPOCHS) -> list[dict[str, float]]:
    losses: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        epoch = classic_contender(Path(tmp) / "data", Path(tmp), seed=seed, losses=losses)
        for _ in range(epochs):
            epoch()
    return losses


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean, half-width of its 95% t-interval, and sd (NaN half-width and sd below 2 values)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), math.nan, math.nan
    sd = float(v.std(ddof=1))
    return float(v.mean()), float(sps.t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v)), sd


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and the half-width of its 95% Welch interval (NaN if either side has under 2 values)."""
    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    if va + vb == 0:
        return diff, 0.0
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, float(sps.t.ppf(0.975, dof) * math.sqrt(va + vb))


def in_band(value: float, lo: float, hi: float) -> bool:
    return lo <= round(value, 2) <= hi  # as check_seed_curve.check: the bands are written to 2 decimals


@dataclass(frozen=True)
class Run:
    who: str  # "harness" or "reference" (the seed's own loop)
    seed: int
    threads: int
    precision: str  # the reference is always fp32
    history: list[dict[str, float]]
    step: str = "eager"  # or "compiled" (the harness's --compile); the reference is always eager

    def value(self, metric: str, epoch: int) -> float:
        return self.history[epoch - 1][metric]


def summary(runs: list[Run]) -> list[list[str]]:
    """Per checked point: the band, each side's mean, 95% t-interval, sd and runs in band, and the harness minus the
    reference (Welch). Pass the runs of one configuration."""
    rows = []
    for metric, epoch in POINTS:
        lo, hi = band(metric, epoch)
        side = {who: [r.value(metric, epoch) for r in runs if r.who == who] for who in ("harness", "reference")}
        row = [f"{metric} {epoch}", f"{lo}-{hi}"]
        for values in side.values():
            if not values:
                row += ["-", "-"]
                continue
            mean, half, sd = interval(values)
            row += [f"{mean:.3f} ± {half:.3f} (sd {sd:.3f}, n {len(values)})",
                    f"{sum(in_band(v, lo, hi) for v in values)}/{len(values)}"]
        if side["harness"] and side["reference"]:
            diff, half = welch(side["harness"], side["reference"])
            row.append(f"{diff:+.3f} ± {half:.3f}")
        else:
            row.append("-")
        rows.append(row)
    return rows


def paired(runs: list[Run], base: tuple[int, str, str]) -> list[list[str]]:
    """Each other configuration (threads, precision, step) minus ``base``, seed by seed, per side and point: what float
    order (threads) or precision alone does to the curve."""
    def key(r: Run) -> tuple[int, str, str]:
        return r.threads, r.precision, r.step

    rows = []
    for who in ("harness", "reference"):
        mine = [r for r in runs if r.who == who]
        mine_base = base if who == "harness" else (base[0], "fp32", "eager")  # the seed's loop: fp32, eager
        at_base = {r.seed: r for r in mine if key(r) == mine_base}
        for other in dict.fromkeys(key(r) for r in mine if key(r) != mine_base):
            pairs = [(at_base[r.seed], r) for r in mine if key(r) == other and r.seed in at_base]
            for metric, epoch in POINTS:
                a = [b.value(metric, epoch) for b, _ in pairs]
                b = [o.value(metric, epoch) for _, o in pairs]
                t = paired_t(a, b)
                worst = max(abs(y - x) for x, y in zip(a, b, strict=True))
                label = f"{other[0]} thread(s) {other[1]} {other[2]} - {' '.join(map(str, mine_base))}"
                ci = f" [{t.ci_low:+.3f}, {t.ci_high:+.3f}]" if math.isfinite(t.ci_low) else ""
                rows.append([who, label, f"{metric} {epoch}", f"{t.mean_diff:+.3f}{ci}",
                             f"{t.sd:.3f}" if math.isfinite(t.sd) else "-", f"{worst:.3f}", str(t.n)])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int_list, default=int_list("1-5"), help="harness seeds, e.g. 1-5 or 1,3")
    ap.add_argument("--reference-seeds", type=int_list, default=[], help="seeds for the seed's own loop ('' none)")
    ap.add_argument("--threads", type=int_list, default=[torch.get_num_threads()], help="thread counts, e.g. 1,2")
    ap.add_argument("--precision", type=lambda t: t.split(","), default=["fp32"],
                    help=f"the harness's precisions, e.g. fp32,bf16 (of {', '.join(PRECISIONS)})")
    ap.add_argument("--step", type=lambda t: t.split(","), default=["eager"],
                    help="the harness's steps, e.g. eager,compiled (compiled: bench.run --compile)")
    args = ap.parse_args()
    if bad := [s for s in args.step if s not in STEPS]:
        ap.error(f"--step: {', '.join(bad)} is not one of {', '.join(STEPS)}")
    if bad := [p for p in args.precision if p not in PRECISIONS]:
        ap.error(f"--precision: {', '.join(bad)} is not one of {', '.join(PRECISIONS)}")
    if not args.threads or min(args.threads) < 1:
        ap.error("--threads: give one or more counts of at least 1, e.g. 2 or 2,1")
    data = load_mnist() if args.seeds else None
    runs: list[Run] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        jobs = [("harness", s, p, step) for step in args.step for p in args.precision for s in args.seeds]
        jobs += [("reference", s, "fp32", "eager") for s in args.reference_seeds]
        for who, seed, precision, step in jobs:
            t0 = time.perf_counter()
            history = harness_curve(seed, precision, data, step) if who == "harness" else reference_curve(seed)
            runs.append(Run(who, seed, threads, precision, history, step))
            points = "  ".join(f"{m} {e}: {history[e - 1][m]:.4f}" for m, e in POINTS)
            print(f"{who:9s} seed {seed:2d}, {threads} thread(s), {precision} {step}: {points}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    base = (args.threads[0], args.precision[0], args.step[0])
    print(f"\n{base[0]} thread(s), harness {base[1]} {base[2]}; 95% t-intervals over runs; a run is in a band when "
          "it rounds into it at 2 decimals")
    first = [r for r in runs if r.threads == base[0] and (r.who == "reference" or (r.precision, r.step) == base[1:])]
    print(tabulate(summary(first),
                   headers=["point", "band", "harness", "in band", "reference (seed's loop)", "in band",
                            "harness - reference"], disable_numparse=True))
    if rows := paired(runs, base):
        print("\nthe same seeds in another configuration, minus the first (paired; 95% t-interval)")
        print(tabulate(rows, headers=["side", "configuration", "point", "mean difference", "sd", "largest", "n"],
                       disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
