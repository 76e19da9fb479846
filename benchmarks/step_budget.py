"""Where the seed's training step goes, by subtracting wall-clock times (python benchmarks/step_budget.py).

torch.profiler's self times (profile_step.py) misplace time: a profiled step takes hundreds of page faults that an
unprofiled one does not (profile_step.py counts them), and they land in whichever ops write weight-sized buffers.
Profiled, fc1's weight-gradient product reads 2-10x its time alone. So this script uses no profiler. It times
these, interleaved in one process, as ms per step (median of --rounds rounds of --steps steps):
- step: the harness's step on the seed's configuration (784-400-20, sgvb_b, batch 128, bench.training.loop's
  model and FusedAdam), on the bundled MNIST: index_select, the estimator, backward, Adam;
- products + Adam: the step's 11 matrix products at its shapes, on a fresh batch each step, then the FusedAdam
  step of the same model. This is the matrix work and the optimiser as the step runs them, with Adam's 10 MB
  sweep between one step's products and the next, as in the step;
- framework: the same estimator, autograd graph and backward on a model of 16-4-2 with a batch of 1, no Adam:
  what dispatch, autograd and Python cost when no tensor costs anything. (The 11 products' dispatch, ~0.05 ms,
  is counted here and in products + Adam alike.)
Then elementwise compute = step - (products + Adam) - framework: the arithmetic and memory traffic of everything
that is neither a product nor Adam (the likelihood, the activations and their gradients, the bias gradients, the
KL, the noise). Below the line, the products and Adam each alone: what running them together adds (caches evicted
by Adam's sweep, threads woken) against speed.py's floors, which time each alone. Last, a check on
torch.profiler: the wall time that freezing fc1's weight saves (its gradient product and its share of Adam), beside
that product timed alone; profile_step.py's self time for the product can be read against both.

With --compile, the step that ``bench.run --compile`` runs (one graph, bench.training.steps) against the same
products and Adam: what the graph leaves over them (the fused elementwise loops, dynamo's entry and the graph's
wrapper, the gather and the noise outside it), and what running products and Adam together adds, without the
profiler's faults.

    python benchmarks/step_budget.py [--precision fp32|bf16] [--steps 200] [--rounds 7] [--threads N] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bench, installed or not

from bench.core.allocator import keep_freed_memory  # noqa: E402
from bench.core.config import TrainConfig  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402
from bench.training import steps  # noqa: E402
from bench.training.adam import FusedAdam  # noqa: E402
from bench.training.loop import build  # noqa: E402
from variants import get_variant  # noqa: E402
from variants import model as model_module  # noqa: E402

BATCH = 128
VARIANT = get_variant("sgvb_b")


def autocast(precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def step_contender(precision: str, train_x: torch.Tensor, freeze_fc1: bool = False,
                   within: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   ) -> Callable[[int], None]:
    """The harness's step (bench.training.loop.train's inner loop, without its bar and running sums), called with
    the step's index. With ``freeze_fc1``, fc1's weight takes no gradient: the step loses that product and that
    weight's Adam update. The estimator runs inside ``within()`` (likelihood_speed.py swaps the likelihood there);
    profile_step.py and likelihood_speed.py time this same step."""
    model, opt = build(VARIANT, TrainConfig(seed=1))
    model.fc1.weight.requires_grad_(not freeze_fc1)
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)

    def step(i: int) -> None:
        j = (i * BATCH) % (len(train_x) - BATCH)
        xb = train_x.index_select(0, perm[j:j + BATCH])
        with autocast(precision), within():
            terms = VARIANT.estimate(model, xb, gen)
        opt.zero_grad(set_to_none=True)
        terms.objective.sum().backward()
        opt.step()

    return step


def compiled_step_contender(precision: str, train_x: torch.Tensor, steps_module: ModuleType = steps,
                            variant: str = "sgvb_b") -> Callable[[int], None]:
    """The step that ``bench.run --compile`` runs (``steps_module.CompiledStep``: this checkout's, or another's for
    step_ab.py), on step_contender's batches, called with the step's index. Exits with one line if it fell back to
    eager. profile_step.py --compile and step_ab.py time this same step."""
    v, cfg = get_variant(variant), TrainConfig(seed=1, precision=precision, compile=True)
    model, opt = build(v, cfg)
    compiled = steps_module.CompiledStep(v, model, opt, cfg, lambda _: None)
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)

    def step(i: int) -> None:
        j = (i * BATCH) % (len(train_x) - BATCH)
        compiled(train_x.index_select(0, perm[j:j + BATCH]), gen)
        if compiled.fallback is not None:
            raise SystemExit(f"{Path(sys.argv[0]).name}: the step did not compile: {compiled.fallback}")

    return step


def products_and_adam_contender(precision: str, train_x: torch.Tensor, products: bool = True,
                                adam: bool = True) -> Callable[[int], None]:
    """The step's forward, weight-gradient and input-gradient products (none for the data), then Adam; or either
    one alone, to see whether running them together costs more than the two apart (caches, threads)."""
    model, opt = build(VARIANT, TrainConfig(seed=1))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    layers = [model.fc1, model.fc2, model.fc3, model.fc4]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    weights = [layer.weight.detach().to(dtype) for layer in layers]  # cast once: the step's casts are not products
    grad_out = [torch.empty_like(w) for w in weights]
    inputs = [torch.rand(BATCH, layer.in_features).to(dtype) for layer in layers]
    out_grads = [torch.rand(BATCH, layer.out_features).to(dtype) for layer in layers]
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))

    def step(i: int) -> None:
        j = (i * BATCH) % (len(train_x) - BATCH)
        if products:
            acts = [train_x.index_select(0, perm[j:j + BATCH]).to(dtype), *inputs[1:]]  # a fresh batch, as the step
            with torch.no_grad():
                for a, w in zip(acts, weights, strict=True):
                    torch.mm(a, w.t())
                for k, (a, g) in enumerate(zip(acts, out_grads, strict=True)):
                    torch.mm(g.t(), a, out=grad_out[k])
                    if k > 0:
                        torch.mm(g, weights[k])
        if adam:
            opt.step()

    return step


def fc1_product_contender(precision: str) -> Callable[[int], None]:
    """The product that fc1's weight gradient takes in the step, [400, 128] x [128, 784], alone and hot."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    grad_h, x = torch.rand(BATCH, 400).to(dtype), torch.rand(BATCH, 784).bernoulli().to(dtype)

    def step(_: int) -> None:
        torch.mm(grad_h.t(), x)

    return step


def framework_contender(precision: str) -> Callable[[int], None]:
    """The step's estimator and backward on a 16-4-2 model and one image: the cost of the ops' count, not size."""
    saved = model_module.DATA_DIM
    model_module.DATA_DIM = 16  # the model reads it when built; restored at once
    try:
        torch.manual_seed(1)
        model = model_module.VAE(latent=2, hidden=4)
    finally:
        model_module.DATA_DIM = saved
    FusedAdam(model.parameters())  # built as the step's is, never stepped: its cost is in products + Adam
    x = torch.rand(1, 16).bernoulli()
    gen = torch.Generator().manual_seed(1)

    def step(_: int) -> None:
        with autocast(precision):
            terms = VARIANT.estimate(model, x, gen)
        for p in model.parameters():
            p.grad = None
        terms.objective.sum().backward()

    return step


def interleaved_ms(contenders: dict[str, Callable[[int], None]], steps: int, rounds: int) -> dict[str, list[float]]:
    """ms per step of each contender, one figure per round; the rounds interleave the contenders, so that a
    machine that slows down slows them all. Each contender is called with the step's index."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for run in contenders.values():
        for i in range(50):  # warm-up: first allocations, kernel choice
            run(i)
    for r in range(rounds):
        for name, run in contenders.items():
            t0 = time.perf_counter()
            for i in range(steps):
                run(r * steps + i)
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return times


def budget(precision: str, steps: int, rounds: int) -> list[list[str]]:
    train_x = load_mnist().train_x
    contenders = {"step": step_contender(precision, train_x),
                  "products + Adam": products_and_adam_contender(precision, train_x),
                  "framework": framework_contender(precision),
                  "products alone": products_and_adam_contender(precision, train_x, adam=False),
                  "Adam alone": products_and_adam_contender(precision, train_x, products=False),
                  "step, fc1's weight frozen": step_contender(precision, train_x, freeze_fc1=True),
                  "fc1's weight-gradient product alone": fc1_product_contender(precision)}
    times = interleaved_ms(contenders, steps, rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    rest = med["step"] - med["products + Adam"] - med["framework"]
    together = med["products + Adam"] - med["products alone"] - med["Adam alone"]

    def row(name: str, ms: float, spread: str = "") -> list[str]:
        return [name, f"{ms:.2f}", spread, f"{ms / med['step']:.0%}"]

    def timed(name: str) -> list[str]:
        return row(name, med[name], f"{min(times[name]):.2f}-{max(times[name]):.2f}")

    return [timed("products + Adam"), timed("framework"), row("elementwise compute (the rest)", rest),
            timed("step"), [], timed("products alone"), timed("Adam alone"),
            row("products + Adam, minus the two alone", together), [],
            row("step minus step with fc1's weight frozen", med["step"] - med["step, fc1's weight frozen"]),
            timed("fc1's weight-gradient product alone")]


def compiled_budget(precision: str, steps: int, rounds: int) -> list[list[str]]:
    train_x = load_mnist().train_x
    contenders = {"compiled step": compiled_step_contender(precision, train_x),
                  "products + Adam": products_and_adam_contender(precision, train_x),
                  "products alone": products_and_adam_contender(precision, train_x, adam=False),
                  "Adam alone": products_and_adam_contender(precision, train_x, products=False)}
    times = interleaved_ms(contenders, steps, rounds)
    med = {k: statistics.median(v) for k, v in times.items()}

    def row(name: str, ms: float, spread: str = "") -> list[str]:
        return [name, f"{ms:.2f}", spread, f"{ms / med['compiled step']:.0%}"]

    def timed(name: str) -> list[str]:
        return row(name, med[name], f"{min(times[name]):.2f}-{max(times[name]):.2f}")

    return [timed("products + Adam"), row("the rest (the graph's loops, its call, the gather and the noise)",
                                          med["compiled step"] - med["products + Adam"]),
            timed("compiled step"), [], timed("products alone"), timed("Adam alone"),
            row("products + Adam, minus the two alone",
                med["products + Adam"] - med["products alone"] - med["Adam alone"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=200, help="steps per contender per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--compile", action="store_true", help="budget the compiled step (bench.run --compile)")
    args = ap.parse_args()
    keep_freed_memory()  # as train() does
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = (compiled_budget if args.compile else budget)(args.precision, args.steps, args.rounds)
    kind = f"{args.precision}, compiled" if args.compile else args.precision
    print(f"{kind}, {torch.get_num_threads()} threads, median of {args.rounds} rounds of {args.steps} steps")
    print(tabulate([r for r in rows if r], headers=["part", "ms / step (median)", "range", "share of the step"],
                   tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
