"""Where the seed's training step spends its time, per op (python benchmarks/profile_step.py).

The harness's step on the seed's configuration (784-400-20, Bernoulli, estimator B, L = 1, batch 128, fused
Adam), as bench.training.loop runs it: index_select of the minibatch, the estimator (under bf16 autocast for
--precision bf16), backward of the summed objective, Adam. torch.profiler records ``--steps`` steps after a
warm-up; ops are grouped by their self CPU time into GEMM (the matrix products), Adam (the fused update),
the likelihood (BCE with logits and its backward), casts / copies, the elementwise tail (everything else that is
an aten op: activations, the noise, the KL, sums) and autograd bookkeeping (what the profiler attributes to the
autograd engine's own nodes and to no aten op). Prints one Markdown table per precision: ms per step and share.
Shares are what to quote on a shared machine; the absolute ms move with its load.

With --compile, the step that ``bench.run --compile`` runs (bench.training.steps.CompiledStep: one inductor
graph), with inductor's kernel profiling on, so that each fused loop shows by name. Its parts: GEMM (the products,
called from the graph), the fused update (Adam's loops, into which inductor folds the elementwise work of the
gradients they read), the fused elementwise (the other loops), and the call itself (dynamo's guards, the
graph's wrapper), besides the gather and the noise, which run outside the graph.

    python benchmarks/profile_step.py [--steps 100] [--threads N] [--top 12] [--compile]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core.allocator import keep_freed_memory  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_budget import compiled_step_contender, step_contender  # noqa: E402

GEMM = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::_addmm_activation")
CASTS = ("aten::to", "aten::_to_copy", "aten::copy_", "aten::empty_strided", "aten::clone", "aten::contiguous")
COMPILED_CALL = ("TorchDynamo Cache Lookup", "Torch-Compiled Region", "## Call CompiledFxGraph",
                 "AOTDispatcher Runtime Wrapper Prologue", "Pregraph bytecode")


def category(name: str) -> str:
    if name in GEMM or "mkldnn" in name or "gemm" in name.lower() or name.startswith(("aoti_torch_cpu_mm",
                                                                                       "aoti_torch_cpu_addmm")):
        return "GEMM"
    if name.startswith("graph_") and "_cpp_fused_" in name:  # an inductor loop; Adam's are those with its lerp
        return "fused update (Adam)" if "lerp" in name else "fused elementwise"
    if name.startswith(COMPILED_CALL):
        return "the compiled call (guards, wrapper)"
    if "adam" in name.lower():
        return "Adam"
    if any(part in name.lower() for part in ("binary_cross_entropy", "binarycrossentropy", "log_sigmoid",
                                             "softplus", "likelihood", "bernoulli")):
        return "likelihood"
    if name in CASTS:
        return "casts / copies"
    if name == "aten::index_select":
        return "index_select"
    if name.startswith("aten::"):
        return "elementwise tail"
    return "autograd bookkeeping"


def step_fn(precision: str, compiled: bool = False) -> Callable[[], None]:
    """The harness's step as step_budget.py times it (its model, FusedAdam, sgvb_b), on successive batches; or
    the compiled step (``bench.run --compile``) on the same batches."""
    train_x, steps = load_mnist().train_x, itertools.count()
    if not compiled:
        step = step_contender(precision, train_x)
        return lambda: step(next(steps))
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True  # each fused loop a profiler event, by its kernel's name
    compiled_step = compiled_step_contender(precision, train_x)
    compiled_step(next(steps))  # compiles (a few seconds with inductor's disk cache warm, tens without)
    return lambda: compiled_step(next(steps))


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def wall_ms(step: Callable[[], None], steps: int) -> tuple[float, float]:
    """Wall-clock ms per step without the profiler (the ops' self time plus Python's and the dispatcher's), and
    minor page faults per step."""
    f0, t0 = minor_faults(), time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) * 1e3 / steps, (minor_faults() - f0) / steps


def profile_table(precision: str, steps: int, top: int, compiled: bool = False) -> str:
    step = step_fn(precision, compiled)
    for _ in range(20):
        step()
    wall, faults = wall_ms(step, steps)
    # A profiled step faults fresh pages in where an unprofiled one reuses its freed buffers (most likely the
    # profiler's event store takes that heap space); the faults per step say how inflated a profile is.
    f0 = minor_faults()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    profiled_faults = (minor_faults() - f0) / steps
    events = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    cats: dict[str, float] = defaultdict(float)
    for e in events:
        cats[category(e.key)] += e.self_cpu_time_total / 1e3 / steps
    title = f"{precision}, compiled" if compiled else precision
    lines = [f"### {title}: {total_ms:.2f} ms of self CPU time per step ({steps} steps, "
             f"{torch.get_num_threads()} threads); {wall:.2f} ms wall per step unprofiled; page faults per step "
             f"{faults:.1f} unprofiled, {profiled_faults:.1f} profiled", "",
             "| part | ms / step | share |", "| --- | --- | --- |"]
    for c, ms in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {c} | {ms:.3f} | {ms / total_ms:.0%} |")
    lines += ["", "| op (top by self CPU) | part | ms / step | calls / step |", "| --- | --- | --- | --- |"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        name = e.key if len(e.key) <= 80 else e.key[:79] + "…"  # inductor's loops are named for all they fuse
        lines.append(f"| {name} | {category(e.key)} | {e.self_cpu_time_total / 1e3 / steps:.3f} | "
                     f"{e.count / steps:g} |")
    by_shape = prof.key_averages(group_by_input_shape=True)

    def shape(e: object, i: int) -> str:
        shapes = getattr(e, "input_shapes", None)
        return "x".join(map(str, shapes[i])) if shapes and len(shapes) > i and shapes[i] else "scalar"

    # Which products take the time, by shape; benchmarks/step_budget.py times them without the profiler.
    gemms = [e for e in by_shape if e.key in GEMM]  # none when compiled: the graph's calls record no shapes
    if gemms:
        lines += ["", "| GEMM | operand shapes | ms / step | calls / step |", "| --- | --- | --- | --- |"]
    for e in sorted(gemms, key=lambda e: -e.self_cpu_time_total):
        operands = " x ".join(shape(e, i) for i in ((0, 1) if e.key == "aten::mm" else (1, 2)))
        lines.append(f"| {e.key} | {operands} | {e.self_cpu_time_total / 1e3 / steps:.3f} | {e.count / steps:g} |")
    # Which tensors the copies move: autocast's casts of the weights one way and their gradients the other.
    copies = [e for e in by_shape if e.key == "aten::copy_"]
    lines += ["", "| copy_ of shape | ms / step | calls / step |", "| --- | --- | --- |"]
    for e in sorted(copies, key=lambda e: -e.self_cpu_time_total)[:6]:
        lines.append(f"| {shape(e, 0)} | {e.self_cpu_time_total / 1e3 / steps:.3f} | {e.count / steps:g} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--compile", action="store_true", help="profile the compiled step (bench.run --compile)")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's malloc thresholds as they are (train() raises them: bench.core.allocator)")
    args = ap.parse_args()
    if not args.system_malloc:
        keep_freed_memory()  # as train() does
    if args.threads:
        torch.set_num_threads(args.threads)
    for precision in ("fp32", "bf16"):
        print(profile_table(precision, args.steps, args.top, args.compile), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
