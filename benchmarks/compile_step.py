"""Would torch.compile pay for a 10-epoch run? The seed's step, eager against compiled, compile time counted.

    python benchmarks/compile_step.py              # about 2 minutes on 2 CPU cores
    python benchmarks/compile_step.py --steps 200

The step is the harness's (sgvb_b, latent 20, batch 128, fused Adam): the estimator's forward and backward compiled
with static shapes (torch.compile(dynamic=False)), Adam eager. Each mode runs in a fresh process: eager; compiled
with an empty inductor cache (cold: what a user's first run pays); compiled again with that cache (warm: what
later runs with the same configuration pay). Each process prints its first-steps seconds (compile included), its
ms per step over --steps steps in 3 rounds (median), and the loss of its first step on fixed inputs, so eager and
compiled can be compared to the last bit. The verdict: the steps a run must take before compiling has paid for
itself, against the 4,690 steps of the seed's 10 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS_PER_10_EPOCHS = 10 * 469  # 60,000 images in batches of 128


def child(mode: str, steps: int, threads: int | None) -> None:
    sys.path.insert(0, str(REPO))  # this checkout's bench, installed or not
    import torch

    from bench.core.allocator import keep_freed_memory
    from bench.core.config import TrainConfig
    from bench.training.loop import build
    from variants import get_variant
    from variants.terms import fixed_noise

    keep_freed_memory()  # as train() does
    if threads:
        torch.set_num_threads(threads)
    variant = get_variant("sgvb_b")
    model, opt = build(variant, TrainConfig(device="cpu", seed=1))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(128, 784, generator=gen).bernoulli(generator=gen)

    def objective(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        with fixed_noise(eps):
            return variant.estimate(model, x, None).objective.sum()

    t0 = time.perf_counter()  # from here: torch.compile's own import of torch._dynamo counts too
    f = torch.compile(objective, dynamic=False) if mode != "eager" else objective

    def step() -> float:
        loss = f(x, torch.randn(1, 128, 20, generator=gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    first = step()  # compiles, when compiled
    for _ in range(2):
        step()
    warmup = time.perf_counter() - t0
    per_step = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        per_step.append((time.perf_counter() - t0) / steps * 1e3)
    print(json.dumps({"warmup_s": warmup, "ms": statistics.median(per_step), "first_loss": first}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400, help="steps per timed round (3 rounds per mode)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", choices=["eager", "cold", "warm"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps, args.threads)
        return
    out = {}
    with tempfile.TemporaryDirectory(prefix="vae-bench-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for mode in ("eager", "cold", "warm"):
            cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"compile_step.py: the {mode} run failed: {proc.stderr.strip()[-500:]}")
            out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{mode}: first 3 steps {out[mode]['warmup_s']:.2f} s, {out[mode]['ms']:.3f} ms/step, "
                  f"first loss {out[mode]['first_loss']!r}", flush=True)
    eager = out["eager"]
    for mode in ("cold", "warm"):
        saved_ms = eager["ms"] - out[mode]["ms"]
        extra_s = out[mode]["warmup_s"] - eager["warmup_s"]
        if saved_ms <= 0:
            print(f"{mode}: compiled is not faster per step; it never pays")
            continue
        breakeven = extra_s / (saved_ms / 1e3)
        print(f"{mode}: {extra_s:.1f} s of compiling against {saved_ms:.3f} ms saved a step "
              f"({saved_ms / eager['ms']:.1%}): pays after {breakeven:,.0f} steps; 10 epochs are "
              f"{STEPS_PER_10_EPOCHS:,} ({'pays' if breakeven < STEPS_PER_10_EPOCHS else 'does not pay'})")
    same = out["cold"]["first_loss"] == eager["first_loss"]
    print("first-step loss, compiled vs eager: " + ("identical" if same else
          f"differs by {abs(out['cold']['first_loss'] - eager['first_loss']):.3g}"))


if __name__ == "__main__":
    main()
