"""The compiled step's call taken apart: what dynamo's entry costs on top of the graph, and how much of it is guards.

    python benchmarks/compiled_call.py [--precision bf16] [--blocks 20] [--steps 100]

Three ways to run the same compiled step on the same batch, in interleaved blocks in one process (as step_ab.py):
- harness: the step as ``bench.run --compile`` calls it (CompiledStep._run, through torch.compile's wrapper and
  dynamo's frame callback, which checks the guards, then runs the code dynamo generated for the frame);
- by hand: the guards of dynamo's cache entry checked from Python, then that generated code run as a function:
  what dynamo does when the guards pass, without its wrapper and frame callback;
- graph: the compiled graph alone (the function dynamo's code calls), with the inputs dynamo gave it.
Then the guard check alone: in the loop (just after a step, on the caches the step's 10 MB of weights, gradients
and moments have just flushed) and warm (checked back to back). Prints the paired differences with their 95%
t-intervals over the blocks.

It reads dynamo's internals to take the call apart (its cache entries, the compiled function it installs in
steps.py's globals): a measurement, not a path the harness takes. Every block runs a real training step, so the
weights move on; all three ways see the same state in turn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core.allocator import keep_freed_memory  # noqa: E402
from bench.core.config import TrainConfig  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402
from bench.training import steps  # noqa: E402
from bench.training.loop import build  # noqa: E402
from variants import get_variant  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_ab import paired_summary  # noqa: E402

BATCH = 128


def taken_apart(precision: str, variant: str = "sgvb_b") -> dict[str, Callable[[], Any]]:
    """The three calls of one compiled step (module docstring) and its guard check, each a function of nothing."""
    v, cfg = get_variant(variant), TrainConfig(seed=1, precision=precision, compile=True)
    model, opt = build(v, cfg)
    step = steps.CompiledStep(v, model, opt, cfg, lambda _: None)
    xb, gen = load_mnist().train_x[:BATCH].clone(), torch.Generator().manual_seed(1)
    for _ in range(3):
        step(xb, gen)
    if step.fallback is not None or step.compiled is None or step.adam_step is None:
        raise SystemExit(f"compiled_call.py: the step did not compile: {step.fallback}")
    assert isinstance(opt, steps.FusedAdam)
    noise = step._noise(gen)
    corrections = steps.bias_corrections(step.adam_step, opt.lr, opt.betas)  # fixed: each way gets the same inputs
    frame = step.compiled._torchdynamo_orig_callable  # type: ignore[attr-defined]  # whole_step itself
    (entry,) = torch._dynamo.eval_frame._debug_get_cache_entry_list(frame.__code__)
    by_hand_code = types.FunctionType(entry.code, frame.__globals__, "by_hand", None, frame.__closure__)
    free = list(zip(frame.__code__.co_freevars, frame.__closure__, strict=True))
    (name,) = [k for k in entry.code.co_names if k.startswith("__compiled_fn")]  # in steps.py's globals
    graph = vars(steps)[name]
    seen: list[tuple[Any, ...]] = []
    vars(steps)[name] = lambda *a: (seen.append(a), graph(*a))[1]  # the inputs dynamo hands the graph
    try:
        step.compiled(xb, noise, corrections)
    finally:
        vars(steps)[name] = graph
    (inputs,) = seen

    def frame_locals() -> dict[str, Any]:
        return {"xb": xb, "noise": noise, "corrections": corrections, **{k: c.cell_contents for k, c in free}}

    def by_hand() -> Any:
        if not entry.guard_manager.check(frame_locals()):
            raise SystemExit("compiled_call.py: the guards failed by hand, where dynamo's own call passed them")
        return by_hand_code(xb, noise, corrections)

    return {"harness": lambda: step.compiled(xb, noise, corrections), "by hand": by_hand,
            "graph": lambda: graph(*inputs), "guards": lambda: entry.guard_manager.check(frame_locals())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--variant", default="sgvb_b")
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100, help="steps a block, each way")
    args = ap.parse_args()
    if args.blocks < 2:
        raise SystemExit("compiled_call.py: --blocks must be at least 2 (an interval needs two)")
    keep_freed_memory()  # as train() does
    calls = taken_apart(args.precision, args.variant)
    ways = ("harness", "by hand", "graph")
    times: dict[str, list[float]] = {w: [] for w in ways}
    in_loop: list[float] = []
    for b in range(args.blocks):
        for way in ways if b % 2 == 0 else ways[::-1]:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                calls[way]()
            times[way].append((time.perf_counter() - t0) * 1e3 / args.steps)
        for _ in range(args.steps // 10 or 1):  # a step, then its guards on the caches it left
            calls["graph"]()
            t0 = time.perf_counter()
            calls["guards"]()
            in_loop.append((time.perf_counter() - t0) * 1e6)
    t0 = time.perf_counter()
    for _ in range(1000):
        calls["guards"]()
    warm = (time.perf_counter() - t0) * 1e3  # us a check
    print(f"{args.variant} {args.precision}, {torch.get_num_threads()} threads, {args.blocks} blocks of "
          f"{args.steps} steps each way; ms a step (medians): "
          + ", ".join(f"{w} {statistics.median(times[w]):.3f}" for w in ways))
    for before, after in (("harness", "graph"), ("harness", "by hand"), ("by hand", "graph")):
        print(f"  {before} - {after}: " + paired_summary(times[before], times[after]).split("; ")[1])
    print(f"  the guard check alone: {statistics.median(in_loop):.0f} us after a step (median of {len(in_loop)}), "
          f"{warm:.0f} us warm (back to back)")


if __name__ == "__main__":
    main()
