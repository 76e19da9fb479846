"""The seed's training step compiled ahead of time (AOTInductor), against the harness's compiled step:
``python benchmarks/aot_step.py [--precision bf16] [--blocks 20] [--steps 100]``.

A measurement, not a path the harness takes. `bench.run --compile` pays torch._dynamo's and inductor's imports and
dynamo's trace in every process (benchmarks/compile_parts.py: 3.5 s here, more than issue 21's goals leave over a
10-epoch run). A package built once and loaded through torch._C's loader pays neither. What it gives up: dynamo's
guards, so Python state that the trace read is baked in (a plugin's global, bench/training/steps.py), in every
later process too.

The step is the harness's own (bench.training.steps): the variant's objective (``_Objective``, under autocast for
bf16) differentiated by ``torch.func.grad``, with the noise supplied, then Kingma and Ba's update in
``torch._fused_adam_``'s order with the bias corrections given from outside and the subnormal flush, written as
a function that returns the new weights and moments (the caller swaps them in: no copy). ``make_fx`` traces it to
aten ops, torch.export takes that graph, and inductor packages it. Prints: the build's seconds; the package's
load in fresh processes (and that they never imported torch._dynamo); the first step's agreement with the same
function run eagerly; then both steps on the same batches in ABBA-ordered blocks in one process (step_ab.py's
summary: medians and the paired difference, harness minus AOT, with its 95% t-interval). With ``--epochs N``,
then N interleaved rounds of whole epochs beside speed.py's floors: the package's epoch (469 steps from a fresh
model, the last batch taken full, then the harness's test pass on its weights), the harness's compiled epoch
untracked (speed.py's contender: a fresh run, its compile left out, its image grids in), each against its
precision's least possible (GEMM floor + Adam alone + test pass alone).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.core.allocator import keep_freed_memory  # noqa: E402
from bench.core.config import TrainConfig  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402
from bench.training.adam import LEAST_NORMAL, FusedAdam  # noqa: E402
from bench.training.loop import build  # noqa: E402
from bench.training.steps import _Objective, bias_corrections  # noqa: E402
from variants import get_variant  # noqa: E402
from variants.terms import supplied_noise  # noqa: E402

BATCH = 128
LOAD = ("import sys, time; import torch; t = time.perf_counter(); "
        "torch._C._aoti.AOTIModelPackageLoader(sys.argv[1], 'model', False, 1, -1); "
        "print(1e3 * (time.perf_counter() - t), 'torch._dynamo' in sys.modules)")


def functional_step(precision: str) -> tuple[Callable[..., tuple[torch.Tensor, ...]], list[torch.Tensor], int]:
    """The seed's step as a function of (weights..., m..., v..., batch, noise, corrections) that returns (new
    weights..., new m..., new v..., sums), its first arguments (a fresh model, Adam's zeroed moments), and the
    number of parameters."""
    cfg = TrainConfig(seed=1, precision=precision)
    variant = get_variant("sgvb_b")
    model, opt = build(variant, cfg)
    assert isinstance(opt, FusedAdam)
    objective = _Objective(variant, model, cfg)
    names = [n for n, _ in objective.named_parameters()]
    weights = [p.detach().clone() for _, p in objective.named_parameters()]
    (beta1, beta2), eps, n = opt.betas, opt.eps, len(names)

    def step(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ws, ms, vs = args[:n], args[n:2 * n], args[2 * n:3 * n]
        xb, noise, corrections = args[3 * n:]

        def loss(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            with supplied_noise([noise]):
                return torch.func.functional_call(objective, p, (xb,))

        grads, sums = torch.func.grad(loss, has_aux=True)(dict(zip(names, ws, strict=True)))
        new_w, new_m, new_v = [], [], []
        for name, w, m, v in zip(names, ws, ms, vs, strict=True):
            g = grads[name]
            m = torch.lerp(m, g, 1 - beta1)
            v = v * beta2 + (1 - beta2) * g * g
            new_w.append(w - corrections[0] * m / (v.sqrt() / corrections[1] + eps))
            new_m.append(torch.where(m.abs() < LEAST_NORMAL, 0.0, m))
            new_v.append(torch.where(v.abs() < LEAST_NORMAL, 0.0, v))
        return (*new_w, *new_m, *new_v, sums)

    first = [*weights, *[torch.zeros_like(w) for w in weights], *[torch.zeros_like(w) for w in weights]]
    return step, first, n


def build_package(precision: str, path: Path) -> tuple[float, Callable[..., tuple[torch.Tensor, ...]], list]:
    """Traces, exports and packages the step at ``path``; returns the seconds, the eager function and its
    example arguments."""
    from torch.fx.experimental.proxy_tensor import make_fx

    step, first, _ = functional_step(precision)
    example = [*first, load_mnist().train_x[:BATCH], torch.randn(1, BATCH, 20), bias_corrections(
        torch.zeros(()), 1e-3, (0.9, 0.999))]
    t0 = time.perf_counter()
    graph = make_fx(step)(*example)

    class Graph(torch.nn.Module):
        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return graph(*args)

    exported = torch.export.export(Graph(), tuple(example), strict=False)
    torch._inductor.aoti_compile_and_package(exported, package_path=str(path))
    return time.perf_counter() - t0, step, example


def fresh_load(path: Path) -> tuple[float, bool]:
    """(ms to load the package in a fresh process, whether that process imported torch._dynamo)."""
    done = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"aot_step.py: loading {path} failed: {(done.stderr.strip() or 'no output').splitlines()[-1]}")
    ms, dynamo = done.stdout.split()
    return float(ms), dynamo == "True"


class AotSteps:
    """The package as a step on step_budget's batches, called with the step's index: its outputs become the next
    step's weights and moments (``state``, weights first, in the model's parameter order)."""

    def __init__(self, path: Path, precision: str, train_x: torch.Tensor) -> None:
        self.runner = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        _, self.first, self.n = functional_step(precision)
        self.train_x = train_x
        self.perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))
        self.reset()

    def reset(self) -> None:
        """Back to the fresh model's weights and zeroed moments, and the first step."""
        self.state, self.count = list(self.first), torch.zeros(())
        self.gen = torch.Generator().manual_seed(1)

    def __call__(self, i: int) -> None:
        j = (i * BATCH) % (len(self.train_x) - BATCH)
        xb = self.train_x.index_select(0, self.perm[j:j + BATCH])
        noise = torch.randn((1, BATCH, 20), generator=self.gen)
        out = self.runner.run([*self.state, xb, noise, bias_corrections(self.count, 1e-3, (0.9, 0.999))])
        self.count.add_(1)
        self.state = out[:3 * self.n]


def aot_epoch_contender(steps: AotSteps, precision: str) -> Callable[[], float]:
    """One epoch of the package per call from a fresh model (469 steps, the last batch taken full), then the
    harness's test pass on its weights; returns the seconds."""
    import speed

    from bench.evaluation.test_elbo import evaluate_test

    model, _ = build(get_variant("sgvb_b"), TrainConfig(seed=1, precision=precision))
    test_x = load_mnist().test_x

    def run() -> float:
        steps.reset()
        t0 = time.perf_counter()
        for i in range(len(speed.BATCH_SIZES)):
            steps(i)
        with torch.no_grad():
            for p, w in zip(model.parameters(), steps.state[:steps.n], strict=True):
                p.copy_(w)
        evaluate_test(model, test_x)
        return time.perf_counter() - t0

    return run


def epochs_table(precision: str, path: Path, rounds: int, folder: Path) -> str:
    """``rounds`` interleaved rounds of whole epochs beside speed.py's floors (see the module docstring)."""
    import speed

    floor = speed.FLOOR_BF16 if precision == "bf16" else speed.FLOOR_FP32
    contenders = {floor: speed.gemm_floor_contender(torch.bfloat16 if precision == "bf16" else torch.float32),
                  speed.ADAM: speed.adam_floor_contender(), speed.TEST_PASS: speed.test_pass_contender(),
                  "the package's epoch": aot_epoch_contender(AotSteps(path, precision, load_mnist().train_x),
                                                             precision),
                  "the harness's compiled epoch, untracked": speed.harness_contender(precision, False, folder, [])}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for run in contenders.values():  # warm-up
        run()
    for _ in range(rounds):
        for name, run in contenders.items():
            times[name].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    least = med[floor] + med[speed.ADAM] + med[speed.TEST_PASS]
    rows = [f"| least possible ({floor} + Adam + test pass) | {least:.2f} | 1.00x |"]
    rows += [f"| {k} | {med[k]:.2f} ({min(times[k]):.2f}-{max(times[k]):.2f}) | {med[k] / least:.2f}x |"
             for k in list(contenders)[3:]]
    return "\n".join([f"| {precision}, {rounds} rounds | s/epoch, median (range) | vs least possible |",
                      "| --- | --- | --- |", *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100, help="steps a block")
    ap.add_argument("--loads", type=int, default=3, help="fresh processes that load the package")
    ap.add_argument("--epochs", type=int, default=0, help="then this many rounds of whole epochs (0: none)")
    args = ap.parse_args()
    if args.blocks < 2:
        raise SystemExit("aot_step.py: --blocks must be at least 2 (an interval needs two)")
    keep_freed_memory()
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found", as steps.py
    from step_ab import abba_blocks, paired_summary
    from step_budget import compiled_step_contender

    with tempfile.TemporaryDirectory(prefix="vae-bench-aot-") as tmp:
        path = Path(tmp) / "step.pt2"
        seconds, step, example = build_package(args.precision, path)
        print(f"built the {args.precision} package in {seconds:.1f} s (make_fx, torch.export, AOTInductor)")
        loads = [fresh_load(path) for _ in range(args.loads)]
        print(f"loaded in a fresh process in {', '.join(f'{ms:.1f}' for ms, _ in loads)} ms; torch._dynamo imported: "
              f"{any(d for _, d in loads)}")
        runner = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        got, want = runner.run(example), step(*example)
        gap = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(got, want, strict=True))
        print(f"first step against the same function run eagerly: largest relative gap {gap:.1e}")
        train_x = load_mnist().train_x
        sides = {"harness": compiled_step_contender(args.precision, train_x),
                 "aot": AotSteps(path, args.precision, train_x)}
        for run in sides.values():
            for i in range(5):
                run(i)
        times = abba_blocks(sides, args.blocks, args.steps)
        print(f"sgvb_b {args.precision}, {torch.get_num_threads()} threads, {args.blocks} blocks of {args.steps} "
              f"steps, before = the harness's compiled step, after = the AOT package: "
              f"{paired_summary(times['harness'], times['aot'])}")
        print(f"medians: harness {statistics.median(times['harness']):.3f} ms, aot "
              f"{statistics.median(times['aot']):.3f}")
        if args.epochs:
            print(epochs_table(args.precision, path, args.epochs, Path(tmp)))


if __name__ == "__main__":
    main()
