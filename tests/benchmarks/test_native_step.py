"""benchmarks/native_step.cpp, the seed's step as one C++ call: it must train exactly as autograd + Adam would, and
loading it must not change how the rest of the process computes (flush-to-zero). Builds the extension (g++ and
ninja; about 20 s the first time, cached after)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bench.core.config import TrainConfig
from bench.training.loop import build
from tests.benchmarks.test_benchmarks import reference_step
from variants import get_variant

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
native_step = pytest.importorskip("native_step")
manual_step = pytest.importorskip("manual_step")


def test_loading_the_native_step_keeps_subnormals_in_this_process() -> None:
    """-ffast-math passed to the linker would set flush-to-zero in the loading thread: every later op would change."""
    native_step.load()
    assert float(torch.tensor([1e-39]) * torch.tensor([1.0])) != 0.0
    many = torch.full((1 << 20,), 1e-39) * 1.0  # large enough to run on the thread pool too
    assert int(many.count_nonzero()) == 1 << 20


def test_the_native_step_trains_like_autograd_and_torch_adam() -> None:
    """20 steps on binary images, the last on a shorter batch. Each step is held to autograd at the native step's own
    weights (the losses, and the gradient), and its update to torch.optim.Adam fed the same gradients. Comparing
    two free-running trainings instead would flake: a ReLU unit on the edge of 0 takes a gradient in one and not
    the other, and Adam's first update of its weights is lr whatever the gradient's size (30 seeded draws: the
    weights after 20 steps parted beyond the tolerance below in 7, by up to 3.9e-3)."""
    model, _ = build(get_variant("sgvb_b"), TrainConfig())
    images = torch.rand(200, 784).bernoulli()
    at = [p.detach().clone().requires_grad_() for p in manual_step.layer_parameters(model)]  # autograd, reset a step
    ref = [p.detach().clone().requires_grad_() for p in manual_step.layer_parameters(model)]  # torch.optim.Adam's
    native = native_step.NativeStep(model, images, max_batch=32)
    opt = torch.optim.Adam(ref, lr=1e-3)
    gen = torch.Generator().manual_seed(3)
    for k in range(20):
        n = 32 if k < 19 else 13
        idx, eps = torch.randperm(200, generator=gen)[:n], torch.randn(n, 20, generator=gen)
        with torch.no_grad():
            for a, w in zip(at, native.hand.weights, strict=True):
                a.copy_(w)
                a.grad = None
        want_nll, want_kld = reference_step(at, images[idx], eps)
        nll, kld = native.step(idx, eps)
        assert nll == pytest.approx(want_nll, rel=1e-5)
        assert kld == pytest.approx(want_kld, rel=1e-4)
        for got, a in zip(native.hand.grads, at, strict=True):  # fp32 rounding, as manual_step's 3e-7
            assert float((got - a.grad).abs().max() / a.grad.abs().max()) < 1e-5
        for r, got in zip(ref, native.hand.grads, strict=True):
            r.grad = got.clone()
        opt.step()
    # atol lr / 100, as for manual_step's WholeStep: a wrong Adam term moves weights by about lr
    for got, want in zip(native.hand.weights, ref, strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-5)
    assert float(native.count) == 20


def test_the_native_step_flushes_subnormal_moments_every_16_steps_as_fused_adam() -> None:
    """Pixel 0 is dark in every image, so fc1's column 0 takes no gradient and its Adam moments only decay: planted
    as subnormals, they survive a step that is not a multiple of 16 and are zeroed by the 16th."""
    model, _ = build(get_variant("sgvb_b"), TrainConfig())
    images = torch.rand(64, 784).bernoulli()
    images[:, 0] = 0
    native = native_step.NativeStep(model, images, max_batch=16)
    column0 = torch.zeros(400, 784, dtype=torch.bool)
    column0[:, 0] = True
    mask = torch.cat([column0.reshape(-1), torch.zeros(native.exp_avg.numel() - column0.numel(), dtype=torch.bool)])
    gen = torch.Generator().manual_seed(5)
    for k in range(1, 17):
        if k in (14, 16):
            native.exp_avg[mask] = 1e-39
            native.exp_avg_sq[mask] = 1e-39
        native.step(torch.randperm(64, generator=gen)[:16], torch.randn(16, 20, generator=gen))
        if k == 14:  # decayed by beta1 / beta2, still subnormal, not flushed
            assert bool((native.exp_avg[mask] > 0).all()) and bool((native.exp_avg[mask] < 1.2e-38).all())
            assert bool((native.exp_avg_sq[mask] > 0).all())
    assert bool((native.exp_avg[mask] == 0).all()) and bool((native.exp_avg_sq[mask] == 0).all())
    assert bool((native.exp_avg[~mask] != 0).any())  # the rest of the state is untouched


def test_the_native_step_refuses_inputs_its_raw_pointers_cannot_read() -> None:
    model, _ = build(get_variant("sgvb_b"), TrainConfig())
    images = torch.rand(64, 784)
    native = native_step.NativeStep(model, images, max_batch=16)
    with pytest.raises(ValueError, match="eps must be"):
        native.step(torch.arange(8), torch.randn(8, 19))
    with pytest.raises(ValueError, match="idx must be"):
        native.step(torch.arange(17), torch.randn(17, 20))
    with pytest.raises(ValueError, match="float32 training images"):
        native_step.NativeStep(model, images.double())


def test_the_native_bf16_step_takes_the_hand_written_bf16_gradient() -> None:
    """bf16 products, the loss and the KL in fp32: manual_step.HandWrittenStep's scheme, which a test holds to
    autocast's gradients. The weights' gradients are the same products of operands rounded to bf16, which agree but
    where an fp32 value lies next to a bf16 rounding boundary (50 draws: 5 of 200 weight gradients differed, by at
    most 4.2e-3 relative); the biases' are sums of the bf16 output gradients here (as autocast takes them) and of the
    fp32 ones there. So both agree to bf16 rounding; a wrong view, cast or offset is off by order 1."""
    model, _ = build(get_variant("sgvb_b"), TrainConfig())
    images = torch.rand(64, 784).bernoulli()
    start = [p.detach().clone() for p in manual_step.layer_parameters(model)]
    native = native_step.NativeStep(model, images, max_batch=64, dtype=torch.bfloat16)
    hand = manual_step.HandWrittenStep(model, torch.bfloat16)
    eps = torch.randn(64, 20, generator=torch.Generator().manual_seed(2))
    nll, kld = native.step(torch.arange(64), eps)
    want_nll, want_kld = (float(v) for v in hand.backward(images, eps))
    assert nll == pytest.approx(want_nll, rel=1e-5)
    assert kld == pytest.approx(want_kld, rel=1e-4)
    for got, want in zip(native.hand.grads, hand.grads, strict=True):
        assert float((got - want).abs().max() / want.abs().max()) < 1e-2
    # Adam stepped the fp32 masters by about lr (its first step moves every weight with a gradient by lr)
    moved = torch.cat([(w - s).reshape(-1) for w, s in zip(native.hand.weights, start, strict=True)])
    assert moved.dtype == torch.float32 and 0.9e-3 < float(moved.abs().max()) < 1.1e-3
