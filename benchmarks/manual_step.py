"""How fast can eager PyTorch train the seed's model on this machine at all? The step written out by hand.

    python benchmarks/manual_step.py              # about 1 minute on 2 CPU cores
    python benchmarks/manual_step.py --rounds 5

The harness lets autograd differentiate every estimator. This script writes out the one configuration the
speed goals are set on (estimator B, L=1, Bernoulli decoder, 784-400-20, batch 128, fused Adam 1e-3): the
forward pass and the chain rule of the seed's loss as explicit matrix products, with no autograd, no
per-op graph and one flat parameter tensor for Adam. That is close to the least work an eager trainer can
do per step, so it bounds what the harness could gain by being rewritten for this one variant.

It first checks the hand-written gradients against autograd's on the harness's own model (fp32: to float
rounding; bf16: against autocast, to bf16 rounding). Then, in interleaved rounds in this one process, it
times one epoch of:
- the GEMM floor (benchmarks/speed.py) in fp32 and bf16, fused Adam alone and the test pass alone, which add up to
  speed.py's "least possible" line of each precision (issue 21's goals are ratios to it);
- the hand-written step, fp32 and bf16 (products in bf16, the loss and Adam in fp32, as autocast does),
  followed by the harness's own test pass (bench.evaluation.test_elbo.evaluate_test, as every contender runs one);
- the harness, untracked (bench.training.loop.train: training, test pass, image grids);
- with --compiled python|cpp, the hand-written step compiled by torch.compile (inductor fuses its elementwise work
  into generated C++ loops; "cpp" also calls the kernels from generated C++): about the nearest PyTorch itself
  comes to a fused native step; and the whole step compiled, the batch gather and Adam inside (WholeStep). Their
  compile time is printed and counted as a 10-epoch run would spread it;
- with --native, the whole step as one C++ call, fp32 and bf16 (native_step.py): the kernels those lines count
  and little else, so about the least any step on this machine pays beyond them.

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python benchmarks/manual_step.py --compiled cpp   # a cold compile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from speed import (
    ADAM,
    BATCH,
    FLOOR_BF16,
    FLOOR_FP32,
    TEST_PASS,
    adam_floor_contender,
    gemm_floor_contender,
    least_possible,
    test_pass_contender,
)
from tabulate import tabulate
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bench, installed or not

from bench.cli import quiet_libraries  # noqa: E402
from bench.core.config import TrainConfig  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402
from bench.evaluation.test_elbo import evaluate_test  # noqa: E402
from bench.tracking.tracker import NullTracker  # noqa: E402
from bench.training.adam import FusedAdam  # noqa: E402
from bench.training.loop import build, train  # noqa: E402
from variants import get_variant  # noqa: E402
from variants.likelihoods import Bernoulli  # noqa: E402
from variants.model import VAE  # noqa: E402


def layer_parameters(model: VAE) -> list[Tensor]:
    """The seed model's weights and biases in the order of model.parameters(): fc1.weight, fc1.bias, ... fc4.bias."""
    return [p for layer in (model.fc1, model.fc2, model.fc3, model.fc4) for p in (layer.weight, layer.bias)]


BERNOULLI = Bernoulli()  # the harness's log p(x|z); no grad needed here: the backward is written out below


class HandWrittenStep:
    """sgvb_b with L=1 and a Bernoulli decoder; -ELBO = BCE(l, x) + KL, summed over the batch.

    Forward: h1 = relu(x W1' + b1), [mu, logvar] = h1 W2' + b2, z = mu + exp(logvar / 2) * eps,
    h3 = relu(z W3' + b3), l = h3 W4' + b4. Backward, from d(-ELBO)/dl = sigmoid(l) - x:
    dz = dh3 W3, d/dmu = dz + mu, d/dlogvar = dz * eps * sigma / 2 + (sigma^2 - 1) / 2.
    """

    def __init__(self, model: VAE, dtype: torch.dtype) -> None:
        params = [p.detach() for p in layer_parameters(model)]
        self.flat = nn.Parameter(torch.cat([p.reshape(-1) for p in params]))
        self.flat.grad = torch.zeros_like(self.flat)
        self.weights = self._views(self.flat.data, params)
        self.grads = self._views(self.flat.grad, params)
        self.opt = FusedAdam([self.flat], lr=1e-3)  # the harness's Adam (its subnormal flush too), one tensor
        self.dtype = dtype
        self.latent = model.latent

    @staticmethod
    def _views(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
        return [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in like]), like, strict=True)]

    def backward(self, x: Tensor, eps: Tensor) -> Tensor:
        """Fill self.flat.grad with the batch's gradient; return (recon, kld) summed over the batch."""
        lp = self.dtype  # the products' precision
        w1, b1, w2, b2, w3, b3, w4, b4 = (w.to(lp) for w in self.weights)
        g_w1, g_b1, g_w2, g_b2, g_w3, g_b3, g_w4, g_b4 = self.grads
        x_lp = x.to(lp)
        h1 = torch.addmm(b1, x_lp, w1.t()).relu_()
        e = torch.addmm(b2, h1, w2.t()).float()
        mu, logvar = e[:, :self.latent], e[:, self.latent:]
        sigma = logvar.mul(0.5).exp_()
        z = torch.addcmul(mu, sigma, eps)
        z_lp = z.to(lp)
        h3 = torch.addmm(b3, z_lp, w3.t()).relu_()
        logits = torch.addmm(b4, h3, w4.t()).float()
        var = sigma * sigma
        sums = torch.stack((-BERNOULLI.log_prob(x, logits).sum(),
                            -0.5 * (1 + logvar - mu * mu - var).sum()))
        d_logits = logits.sigmoid_().sub_(x)
        d_h3 = self._weight_grads(d_logits, h3, g_w4, g_b4).mm(w4).mul_(h3 > 0)
        d_z = self._weight_grads(d_h3, z_lp, g_w3, g_b3).mm(w3).float()
        d_e = torch.cat((d_z + mu, torch.addcmul((var - 1).mul_(0.5), d_z * eps, sigma, value=0.5)), dim=1)
        d_h1 = self._weight_grads(d_e, h1, g_w2, g_b2).mm(w2).mul_(h1 > 0)
        self._weight_grads(d_h1, x_lp, g_w1, g_b1)
        return sums

    @staticmethod
    def _weight_grads(d_out: Tensor, inp: Tensor, g_w: Tensor, g_b: Tensor) -> Tensor:
        """For out = inp w' + b: writes d/dw = d_out' inp and d/db = sum of d_out; returns d_out in the
        products' precision (d/dinp is that times w)."""
        g_b.copy_(d_out.sum(0))
        d_out = d_out.to(inp.dtype)
        g_w.copy_(d_out.t().mm(inp))
        return d_out

    def load_into(self, model: VAE) -> None:
        with torch.no_grad():
            for p, w in zip(layer_parameters(model), self.weights, strict=True):
                p.copy_(w)


NATIVE = "native step {} (gather + Adam, C++) + test pass"
WRAPPERS = ("python", "cpp")  # how inductor calls its kernels: from Python, or from generated C++ (cpp_wrapper)


def step_function(step: HandWrittenStep, compiled: str | None) -> Callable[[Tensor, Tensor], Tensor]:
    """step.backward, or (``compiled`` "python" / "cpp") the same compiled by torch.compile with static shapes:
    inductor fuses the elementwise work into generated C++ loops and calls the GEMMs as library kernels. There is
    no autograd graph to compile, so this is about the nearest PyTorch itself comes to a fused native step."""
    if compiled is None:
        return step.backward
    return torch.compile(step.backward, dynamic=False, options={"cpp_wrapper": compiled == "cpp"})


class WholeStep:
    """A whole training step as one function: the batch gathered from the training images, the hand-written step,
    and Adam on the flat parameters (bias-corrected as torch.optim.Adam, no subnormal flush: a first epoch meets
    none), so that compiled, only the call itself runs eagerly. The epoch's permutation and noise are drawn
    beforehand, since a torch.Generator cannot enter a compiled graph."""

    BETAS, LR, EPS = (0.9, 0.999), 1e-3, 1e-8

    def __init__(self, model: VAE, dtype: torch.dtype, train_x: Tensor, compiled: str | None) -> None:
        self.hand = HandWrittenStep(model, dtype)
        # the weights' own base tensor: aot_autograd cannot mix views of it with a second alias of the same storage
        self.p, self.g = self.hand.weights[0]._base, self.hand.grads[0]._base
        self.m, self.v = torch.zeros_like(self.p), torch.zeros_like(self.p)
        self.train_x = train_x
        self.step = self._step if compiled is None else torch.compile(
            self._step, dynamic=False, options={"cpp_wrapper": compiled == "cpp"})

    def _step(self, idx: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        sums = self.hand.backward(self.train_x.index_select(0, idx), eps)
        (b1, b2), g = self.BETAS, self.g
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        # p -= lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
        self.p.addcdiv_(self.m / (1 - b1**t), (self.v / (1 - b2**t)).sqrt_().add_(self.EPS), value=-self.LR)
        return sums


def check_gradients(x: Tensor, compiled: str | None = None) -> dict[str, float]:
    """The largest over parameters of max |hand-written - autograd| / max |autograd| on one batch, for fp32 and
    for bf16 (against autocast); with ``compiled``, of the compiled hand-written step."""
    worst = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, _ = build(get_variant("sgvb_b"), TrainConfig())
        step = HandWrittenStep(model, dtype)
        gen = torch.Generator().manual_seed(7)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
        with autocast:
            get_variant("sgvb_b").estimate(model, x, gen).objective.sum().backward()
        eps = torch.randn((len(x), model.latent), generator=torch.Generator().manual_seed(7))
        step_function(step, compiled)(x, eps)
        auto = [p.grad for p in layer_parameters(model)]
        errors = [float((g - a).abs().max() / a.abs().max()) for g, a in zip(step.grads, auto, strict=True)]
        worst[name] = max(errors)
    return worst


Epoch = Callable[[torch.Generator], HandWrittenStep]  # trains one epoch; returns the step holding the weights


def first_epoch_contender(prepare: Callable[[VAE, Tensor], Epoch]) -> Callable[[], float]:
    """The first epoch of a fresh model per call (as the harness contender and speed.py time: a model trained on
    for epochs would meet Adam's subnormals, bench.training.adam), then the harness's test pass. ``prepare(model,
    train_x)`` builds the step outside the clock and returns the epoch to time."""
    data = load_mnist()
    epoch = [0]

    def run() -> float:
        epoch[0] += 1
        model, _ = build(get_variant("sgvb_b"), TrainConfig())
        train_epoch = prepare(model, data.train_x)
        gen = torch.Generator().manual_seed(epoch[0])
        t0 = time.perf_counter()
        train_epoch(gen).load_into(model)  # the test pass runs on the harness's model, with the trained weights
        evaluate_test(model, data.test_x)
        return time.perf_counter() - t0

    return run


def hand_written_contender(dtype: torch.dtype, compiled: str | None = None) -> Callable[[], float]:
    """The hand-written step, Adam eager. Compiled, the first call compiles (for the full batches and for the last,
    shorter one); later calls reuse those graphs."""
    def prepare(model: VAE, train_x: Tensor) -> Epoch:
        step = HandWrittenStep(model, dtype)
        backward = step_function(step, compiled)

        def train_epoch(gen: torch.Generator) -> HandWrittenStep:
            perm = torch.randperm(len(train_x), generator=gen)
            sums = torch.zeros(2)
            for i in range(0, len(train_x), BATCH):
                x = train_x.index_select(0, perm[i:i + BATCH])
                sums += backward(x, torch.randn((len(x), step.latent), generator=gen))
                step.opt.step()
            return step

        return train_epoch

    return first_epoch_contender(prepare)


def whole_step_contender(dtype: torch.dtype, compiled: str) -> Callable[[], float]:
    """The batch gather and Adam inside the compiled function too (WholeStep)."""
    def prepare(model: VAE, train_x: Tensor) -> Epoch:
        whole = WholeStep(model, dtype, train_x, compiled)

        def train_epoch(gen: torch.Generator) -> HandWrittenStep:
            perm = torch.randperm(len(train_x), generator=gen)
            noise = torch.randn((len(train_x), model.latent), generator=gen)
            sums, t = torch.zeros(2), torch.zeros(())
            for i in range(0, len(train_x), BATCH):
                t += 1  # a tensor, so that the step count is not baked into the graph
                sums += whole.step(perm[i:i + BATCH], noise[i:i + BATCH], t)
            return whole.hand

        return train_epoch

    return first_epoch_contender(prepare)


def harness_contender(precision: str) -> Callable[[], float]:
    data, variant = load_mnist(), get_variant("sgvb_b")
    cfg = TrainConfig(epochs=1, precision=precision)

    def run() -> float:
        t0 = time.perf_counter()
        train(variant, cfg, data, NullTracker(), log=lambda _: None)
        return time.perf_counter() - t0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each contender runs one epoch a round")
    ap.add_argument("--compiled", choices=WRAPPERS, default=None,
                    help="also time the hand-written step and the whole step (gather + Adam) compiled by "
                         "torch.compile (inductor), their kernels called from Python or from generated C++")
    ap.add_argument("--native", action="store_true",
                    help="also time the whole step as one C++ call (native_step.py; builds it on first use)")
    args = ap.parse_args()
    quiet_libraries()
    x = load_mnist().train_x[:BATCH]
    errors = {k: f"{v:.1e}" for k, v in check_gradients(x).items()}
    if args.compiled:  # on 16 images: the batch-128 graphs are compiled (and timed) in the warm-up epoch below
        errors = {k: f"{v} (compiled: {c:.1e})" for (k, v), c in zip(errors.items(),
                                                                     check_gradients(x[:16], args.compiled).values(),
                                                                     strict=True)}
    print(tabulate(errors.items(), headers=["hand-written vs autograd", "max relative gradient error"]), "\n")
    contenders = {  # name: (precision, one epoch per call)
        FLOOR_FP32: ("fp32", gemm_floor_contender()),
        FLOOR_BF16: ("bf16", gemm_floor_contender(torch.bfloat16)),
        ADAM: ("fp32", adam_floor_contender()),
        TEST_PASS: ("fp32", test_pass_contender()),
        "hand-written fp32 + test pass": ("fp32", hand_written_contender(torch.float32)),
        "hand-written bf16 + test pass": ("bf16", hand_written_contender(torch.bfloat16)),
        "harness fp32, untracked": ("fp32", harness_contender("fp32")),
        "harness bf16, untracked": ("bf16", harness_contender("bf16")),
    }
    if args.compiled:
        for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            contenders[f"hand-written {p}, compiled ({args.compiled} wrapper) + test pass"] = (
                p, hand_written_contender(dtype, args.compiled))
            contenders[f"whole step {p} (gather + Adam), compiled ({args.compiled} wrapper) + test pass"] = (
                p, whole_step_contender(dtype, args.compiled))
    if args.native:
        import native_step  # here: it imports this module's step and frame

        native_step.load()
        print(f"native step: built or loaded in {native_step.build_seconds:.1f} s\n")
        for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            contenders[NATIVE.format(p)] = (p, native_step.native_contender(dtype))
    times: dict[str, list[float]] = {k: [] for k in contenders}
    warm_up = {name: run() for name, (_, run) in contenders.items()}  # a compiled contender compiles here
    for r in range(args.rounds):
        for name, (_, run) in contenders.items():
            times[name].append(run())
            print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    least = least_possible(med)
    floor = {"fp32": med[FLOOR_FP32], "bf16": med[FLOOR_BF16]}
    rows = [[name, f"{m:.2f}", f"{m / floor[precision]:.2f}x",
             f"{m / least[precision]:.2f}x" if name.startswith(("hand", "whole", "harness", "native")) else ""]
            for name, m in med.items() for precision in [contenders[name][0]]]
    rows += [[f"least possible {p}", f"{least[p]:.2f}", f"{least[p] / floor[p]:.2f}x", "1.00x"]
             for p in least]
    print()
    print(tabulate(rows, headers=["contender", "s/epoch (median)", "vs GEMM floor of its precision",
                                  "vs least possible of its precision"]))
    for name in (n for n in contenders if "compiled" in n):
        compile_s, p = warm_up[name] - med[name], contenders[name][0]
        with_compile = med[name] + compile_s / 10
        print(f"{name}: compiling took {compile_s:.1f} s (its first epoch minus the median); counted in a 10-epoch "
              f"run, {with_compile:.2f} s/epoch, {with_compile / least[p]:.2f}x its least possible")
    if args.compiled:  # fewer than 10 (2 precisions x 3 + 2 batch shapes) would mean a fallback to eager
        print(f"graphs compiled: {torch._dynamo.utils.counters['stats']['unique_graphs']}")


if __name__ == "__main__":
    main()
