"""The Bernoulli log-likelihood's cost, alone and inside the seed's step (python benchmarks/likelihood_speed.py).

Three ways to compute log p(x|z) = sum_d x_d l_d - softplus(l_d) from the logits l, with their gradients:
- bce: variants.likelihoods.Bernoulli.log_prob as it is, -F.binary_cross_entropy_with_logits(l, x).sum(-1);
- softplus: (x * l).sum(-1) - F.softplus(l).sum(-1), two vectorised ops;
- product: the custom autograd Function that Bernoulli.log_prob used until 2026-12-07. It took softplus(l) =
  (l + |l|)/2 - log sigmoid(|l|) and multiplied 16 sigmoids before each log (one log per 16 pixels), with the
  backward x - sigmoid(l) written by hand. It is kept here, and only here, as the baseline.

Part 1 times forward + backward on one minibatch's logits ([1, 128, 784]) alone. Part 2 times the harness's step
(bench.training.loop's model and FusedAdam, sgvb_b, batch 128, the bundled MNIST) with Bernoulli.log_prob set to
each form in turn, interleaved rounds in one process. It prints per-round paired differences against bce.

    python benchmarks/likelihood_speed.py [--steps 200] [--rounds 9] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bench, installed or not

from bench.core.allocator import keep_freed_memory  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402
from variants.likelihoods import Bernoulli  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_budget import interleaved_ms, step_contender  # noqa: E402

BATCH = 128


class _Product(torch.autograd.Function):
    """The former Bernoulli.log_prob (the baseline): value by the 16-sigmoid product, gradient by hand."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, logits: Tensor) -> Tensor:
        a = logits.abs()
        linear = (x * logits).sum(-1) - 0.5 * (logits.sum(-1) + a.sum(-1))
        s = a.sigmoid_()
        for _ in range(4):  # 784 -> 392 -> 196 -> 98 -> 49 factors, each in [1/2, 1]
            half = s.shape[-1] // 2
            s = s[..., :half] * s[..., half:]
        return linear + s.log_().sum(-1)

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[None, Tensor]:
        x, logits = ctx.saved_tensors
        return None, ((x - torch.sigmoid(logits)) * grad.unsqueeze(-1)).sum_to_size(logits.shape)


FORMS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "bce": Bernoulli().log_prob,
    "softplus": lambda x, lo: (x * lo).sum(-1) - F.softplus(lo).sum(-1),
    "product": _Product.apply,
}
REFERENCE = "bce"  # what the harness runs


def alone(steps: int, rounds: int) -> list[list[str]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 784, generator=gen).bernoulli(generator=gen)
    logits = torch.randn(1, BATCH, 784, generator=gen) * 4
    exact = (x.double() * logits.double()).sum(-1) - F.softplus(logits.double(), threshold=1000).sum(-1)

    def contender(form: Callable[[Tensor, Tensor], Tensor]) -> Callable[[int], None]:
        def run(_: int) -> None:
            form(x, logits.clone().requires_grad_()).sum().backward()

        return run

    times = interleaved_ms({name: contender(form) for name, form in FORMS.items()}, steps, rounds)
    rows = []
    for name, form in FORMS.items():
        err = float((form(x, logits.clone()).double() - exact).abs().max())
        rows.append([name, f"{statistics.median(times[name]):.3f}", f"{min(times[name]):.3f}-{max(times[name]):.3f}",
                     f"{err:.1e}"])
    return rows


@contextlib.contextmanager
def log_prob_as(form: Callable[[Tensor, Tensor], Tensor]) -> Iterator[None]:
    """Bernoulli.log_prob computed by ``form`` inside the block, and restored after it whatever happens."""
    original = Bernoulli.log_prob
    Bernoulli.log_prob = lambda self, x, lo: form(x, lo)
    try:
        yield
    finally:
        Bernoulli.log_prob = original


def in_step(steps: int, rounds: int) -> list[list[str]]:
    train_x = load_mnist().train_x

    def contender(form: Callable[[Tensor, Tensor], Tensor]) -> Callable[[int], None]:
        return step_contender("fp32", train_x, within=lambda: log_prob_as(form))

    contenders = {name: contender(form) for name, form in FORMS.items()}
    times = interleaved_ms(contenders, steps, rounds)
    rows = []
    for name, v in times.items():
        diff = [a - b for a, b in zip(v, times[REFERENCE], strict=True)]
        paired = f"{statistics.median(diff):+.3f} [{min(diff):+.3f}, {max(diff):+.3f}]"
        rows.append([name, f"{statistics.median(v):.3f}", f"{min(v):.3f}-{max(v):.3f}",
                     "" if name == REFERENCE else paired])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    keep_freed_memory()  # as train() does
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads; median of {args.rounds} rounds of {args.steps} steps\n")
    print("forward + backward alone, logits [1, 128, 784]:")
    print(tabulate(alone(args.steps, args.rounds), tablefmt="github",
                   headers=["form", "ms (median)", "range", "max |error| vs float64, nats per image"]))
    print("\nthe seed's step (harness model, FusedAdam, sgvb_b, batch 128) with each form:")
    print(tabulate(in_step(args.steps, args.rounds), tablefmt="github",
                   headers=["form", "ms / step (median)", "range", "minus bce, per round: median [min, max]"]))


if __name__ == "__main__":
    main()
