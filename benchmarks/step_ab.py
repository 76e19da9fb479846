"""This checkout's compiled step against another checkout's, in one process, in interleaved blocks.

    git worktree add /tmp/before <commit>
    python benchmarks/step_ab.py --before /tmp/before [--precision bf16] [--blocks 20] [--steps 100]

On a shared machine two speed.py runs, minutes apart, can differ by more than a change does (rounds swing by 40%
when another tenant works). Here both steps (bench.training.steps.CompiledStep from each checkout, each with its own
model and Adam, the seed's configuration) take the same batches in blocks of ``--steps`` steps, ABBA-ordered, so
that the load falls on both alike. Prints each side's median ms a step and the paired difference, before minus
after, with its 95% t-interval over the blocks, and the median ratio after / before. The other checkout's steps.py
is imported with this checkout's bench package: it must take the same arguments (a change confined to steps.py).
Its own bias, this checkout against itself (``--before bench/training/steps.py``), measured -0.07 [-0.29, +0.15]
and -0.09 [-0.16, -0.01] ms on a 3.6 ms step (benchmarks/README.md), in favour of the side named ``--before``: it
resolves nothing under about 1.5%. Run a change both ways (as ``--before`` and as this checkout) to read its sign.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core.allocator import keep_freed_memory  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402
from bench.training import steps as this_steps  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_budget import compiled_step_contender  # noqa: E402


def load_steps(before: Path) -> ModuleType:
    """The other checkout's bench/training/steps.py (or that file itself), as a module of its own."""
    path = before / "bench" / "training" / "steps.py" if before.is_dir() else before
    if not path.is_file():
        raise SystemExit(f"step_ab.py: no steps.py at {path}")
    spec = importlib.util.spec_from_file_location("steps_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def abba_blocks(sides: dict[str, Callable[[int], None]], blocks: int, steps: int) -> dict[str, list[float]]:
    """ms a step of each side's steps, block by block: block b runs steps [steps * b, steps * (b + 1)) of every
    side, in the sides' order when b is even and reversed when odd (ABBA), so that the load falls on all alike."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for b in range(blocks):
        for name in names if b % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            for i in range(steps * b, steps * (b + 1)):
                sides[name](i)
            times[name].append((time.perf_counter() - t0) * 1e3 / steps)
    return times


def paired_summary(before: list[float], after: list[float]) -> str:
    diff = [b - a for b, a in zip(before, after, strict=True)]
    n, mean = len(diff), statistics.mean(diff)
    half = sps.t.ppf(0.975, n - 1) * statistics.stdev(diff) / n**0.5
    ratio = statistics.median(a / b for b, a in zip(before, after, strict=True))
    return (f"before {statistics.median(before):.3f} ms a step (median), after {statistics.median(after):.3f}; "
            f"before - after {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] ms (95% t, n = {n} paired "
            f"blocks); after / before {ratio:.3f} (median)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the other checkout (or its steps.py)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--variant", default="sgvb_b")
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100, help="steps a block")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.blocks < 2:
        raise SystemExit("step_ab.py: --blocks must be at least 2 (an interval needs two)")
    keep_freed_memory()  # as train() does
    if args.threads:
        torch.set_num_threads(args.threads)
    train_x = load_mnist().train_x
    # A fresh model, Adam and compiled step from each checkout; every side sees the same batch at the same index.
    sides = {"before": compiled_step_contender(args.precision, train_x, load_steps(args.before), args.variant),
             "after": compiled_step_contender(args.precision, train_x, this_steps, args.variant)}
    # Each build resets dynamo (one compiled step a process, steps.py): the second reset drops the first graph,
    # so each side is run once more after both are built (recompiled from inductor's disk cache).
    for _ in range(2):
        for run in sides.values():
            for i in range(5):
                run(i)
    times = abba_blocks(sides, args.blocks, args.steps)
    print(f"{args.variant} {args.precision}, {torch.get_num_threads()} threads, {args.blocks} blocks of "
          f"{args.steps} steps: {paired_summary(times['before'], times['after'])}")


if __name__ == "__main__":
    main()
