"""The seed's step as one native call (native_step.cpp): how near issue 21's goals a step can come on this CPU.

    python benchmarks/manual_step.py --native       # times it beside the others, in the same rounds

manual_step.py bounds eager PyTorch (the step written out by hand) and inductor (that step compiled). This goes
one further: the whole step (batch gather, forward, the chain rule, Adam with FusedAdam's subnormal flush) in C++,
for the one configuration the goals are set on (sgvb_b, L=1, Bernoulli, 784-400-20, batch 128), with its
products in fp32 or, as autocast runs them, in bf16. The products
and Adam are ATen's kernels, as in every other contender; what is gone is everything between them: no Python, no
dispatch through autograd, no allocation (the activations live in buffers made once), and the elementwise work
fused by hand into 4 loops. So its distance from speed.py's "least possible" is about the least that any step on
this machine pays beyond the kernels that line counts. It is a measurement, not a harness path: it serves one
configuration and repeats the estimator's gradient by hand (manual_step.py's reasons apply).

The first call builds the extension with torch.utils.cpp_extension (g++ and ninja; about 20 s here; cached in
torch's extension folder, rebuilt when the source changes). The loops are compiled with -ffast-math, so that the
compiler may call glibc's vector exp and log1p, but it is not passed to the linker: on GCC 12 that would link
crtfastmath.o, whose constructor sets flush-to-zero in every thread that loads the library, changing the other
contenders' numbers and speed in the same process. ``load`` checks that subnormals survive the load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from manual_step import BATCH, Epoch, HandWrittenStep, first_epoch_contender, layer_parameters
from torch import Tensor

from bench.training.adam import FLUSH_EVERY  # importable: manual_step put this checkout on the path

SOURCE = Path(__file__).resolve().with_suffix(".cpp")

_module: ModuleType | None = None
build_seconds: float | None = None  # the last load's build (or cache check) time


def load() -> ModuleType:
    """The compiled extension (built on first use in this process's extension cache)."""
    global _module, build_seconds
    if _module is None:
        from torch.utils import cpp_extension

        t0 = time.perf_counter()
        _module = cpp_extension.load(
            name="vae_bench_native_step", sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-ffast-math"], extra_ldflags=[], verbose=False)
        build_seconds = time.perf_counter() - t0
        tiny = torch.tensor([1e-39]) * torch.tensor([1.0])
        if float(tiny) == 0.0:
            raise RuntimeError("loading native_step flushed subnormals to zero in this process (crtfastmath?)")
    return _module


class NativeStep:
    """The seed model's weights on one flat parameter (HandWrittenStep's layout), trained by native_step.cpp.

    ``dtype`` is the products' precision: bfloat16 runs them as autocast does (the loss and Adam stay fp32).
    ``step(idx, eps)`` takes one Adam step on the images train_x[idx] with noise eps and returns
    (-sum log p(x|z), KL) of the batch before the update. ``hand.weights`` are the weights; ``load_into`` puts
    them into a harness model."""

    def __init__(self, model: torch.nn.Module, train_x: Tensor, max_batch: int = 128,
                 dtype: torch.dtype = torch.float32) -> None:
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError("NativeStep computes its products in float32 or bfloat16")
        if not (train_x.dtype == torch.float32 and train_x.is_contiguous() and train_x.device.type == "cpu"):
            raise ValueError("NativeStep wants contiguous float32 training images on the CPU")
        self.hand = HandWrittenStep(model, torch.float32)
        flat, grad = self.hand.flat.data, self.hand.flat.grad
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)
        self.count = torch.zeros((), dtype=torch.float32)
        self._native = load().SeedStep(train_x, self.hand.weights, self.hand.grads, flat, grad, self.exp_avg,
                                       self.exp_avg_sq, self.count, max_batch, FLUSH_EVERY,
                                       dtype == torch.bfloat16)
        self.latent, self.max_batch = model.latent, max_batch  # the C++ side holds train_x

    def step(self, idx: Tensor, eps: Tensor) -> tuple[float, float]:
        # the C++ side reads raw pointers: shapes and layouts are checked here, once per call
        if idx.dtype != torch.int64 or idx.dim() != 1 or not 0 < len(idx) <= self.max_batch:
            raise ValueError(f"idx must be 1 to {self.max_batch} int64 row numbers")
        if eps.shape != (len(idx), self.latent) or eps.dtype != torch.float32 or not eps.is_contiguous():
            raise ValueError(f"eps must be a contiguous float32 tensor of shape ({len(idx)}, {self.latent})")
        return self._native.step(idx, eps)

    def load_into(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for p, w in zip(layer_parameters(model), self.hand.weights, strict=True):
                p.copy_(w)


def native_contender(dtype: torch.dtype = torch.float32) -> Callable[[], float]:
    """The first epoch of a fresh model, trained by NativeStep (one call a batch), then the harness's test pass:
    manual_step.py's frame, as its other contenders. The epoch's permutation and noise are drawn as WholeStep's."""
    def prepare(model: torch.nn.Module, train_x: Tensor) -> Epoch:
        native = NativeStep(model, train_x, dtype=dtype)

        def train_epoch(gen: torch.Generator) -> HandWrittenStep:
            perm = torch.randperm(len(train_x), generator=gen)
            noise = torch.randn((len(train_x), model.latent), generator=gen)
            for i in range(0, len(train_x), BATCH):
                native.step(perm[i:i + BATCH], noise[i:i + BATCH])
            return native.hand

        return train_epoch

    return first_epoch_contender(prepare)
