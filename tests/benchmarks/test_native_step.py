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
from variants import get_variant

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
native_step = pytest.importorskip("native_step")
manual_step = pytest.importorskip("manual_step")


def reference_step(params: list[torch.Tensor], x: torch.Tensor, eps: torch.Tensor) -> tuple[float, float]:
    """The seed's loss by autograd on plain tensors (fc1.weight, fc1.bias, ..., fc4.bias); fills their .grad."""
    w1, b1, w2, b2, w3, b3, w4, b4 = params
    h1 = torch.relu(x @ w1.T + b1)
    mu, logvar = (h1 @ w2.T + b2).chunk(2, dim=1)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = torch.relu(z @ w3.T + b3) @ w4.T + b4
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum()
    (bce + kld).backward()
    return float(bce.detach()), float(kld.detach())


def test_loading_the_native_step_keeps_subnormals_in_this_process() -> None:
    """-ffast-math passed to the linker would set flush-to-zero in the loading thread: every later op would change."""
    native_step.load()
    assert float(torch.tensor([1e-39]) * torch.tensor([1.0])) != 0.0
    many = torch.full((1 << 20,), 1e-39) * 1.0  # large enough to run on the thread pool too
    assert int(many.count_nonzero()) == 1 << 20


def test_the_native_step_trains_like_autograd_and_torch_adam() -> None:
    """20 steps on binary images, the last on a shorter batch: the same losses before each update and the same
    weights after, from the same start, rows and noise."""
    model, _ = build(get_variant("sgvb_b"), TrainConfig())
    images = torch.rand(200, 784).bernoulli()
    ref = [p.detach().clone().requires_grad_() for p in manual_step.layer_parameters(model)]
    native = native_step.NativeStep(model, images, max_batch=32)
    opt = torch.optim.Adam(ref, lr=1e-3)
    gen = torch.Generator().manual_seed(3)
    for k in range(20):
        n = 32 if k < 19 else 13
        idx, eps = torch.randperm(200, generator=gen)[:n], torch.randn(n, 20, generator=gen)
        nll, kld = native.step(idx, eps)
        opt.zero_grad()
        want_nll, want_kld = reference_step(ref, images[idx], eps)
        opt.step()
        assert nll == pytest.approx(want_nll, rel=1e-5)
        assert kld == pytest.approx(want_kld, rel=1e-4)
    # atol lr / 100, as for manual_step's WholeStep: a wrong gradient or Adam term moves weights by about lr
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
    autocast's gradients. The weights' gradients are the same products of the same bf16 operands, so they must agree
    to the bit; the biases' are sums of the bf16 output gradients here (as autocast takes them) and of the fp32 ones
    there, so they agree to bf16 rounding."""
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
    for k, (got, want) in enumerate(zip(native.hand.grads, hand.grads, strict=True)):
        if k % 2 == 0:  # a weight
            assert torch.equal(got, want)
        else:
            assert float((got - want).abs().max() / want.abs().max()) < 1e-2
    # Adam stepped the fp32 masters by about lr (its first step moves every weight with a gradient by lr)
    moved = torch.cat([(w - s).reshape(-1) for w, s in zip(native.hand.weights, start, strict=True)])
    assert moved.dtype == torch.float32 and 0.9e-3 < float(moved.abs().max()) < 1.1e-3
