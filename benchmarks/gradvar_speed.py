"""bench.evaluate --gradient-variance before and after batching the draws (python benchmarks/gradvar_speed.py).

Before: one backward pass per draw (the loop bench.evaluation.gradvar ran until the draws became a batch
dimension), its gradient flattened and accumulated. After: bench.evaluation.draws.gradient_moments (torch.func.vmap
over the draws). Same model (784-400-20), minibatch (M = 128) and noise; interleaved, best of --rounds.

    python benchmarks/gradvar_speed.py [--repeats 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.evaluation.draws import draw_noise, gradient_moments  # noqa: E402
from bench.evaluation.gradvar import BATCH, COMPARED  # noqa: E402
from variants.model import VAE  # noqa: E402
from variants.terms import fixed_noise  # noqa: E402


def loop(model: VAE, x: torch.Tensor, variant, repeats: int) -> None:
    eps = draw_noise(variant, x, model.latent, repeats, 0)
    params = model.encoder_parameters() + model.decoder_parameters()
    s = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for r in range(repeats):
        model.zero_grad(set_to_none=True)
        with fixed_noise(eps[r]):
            variant.estimate(model, x, None).objective.mean().backward()
        g = torch.cat([p.grad.reshape(-1) for p in params]).double()
        s += g
        s2 += g * g


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    model = VAE(latent=20).eval()
    x = torch.bernoulli(torch.full((BATCH, 784), 0.3), generator=torch.Generator().manual_seed(0))
    print(f"threads {torch.get_num_threads()}, M = {BATCH}, R = {a.repeats}, 784-400-20")
    print("| label | loop s | batched s | speed-up |\n| --- | --- | --- | --- |")
    total = [0.0, 0.0]
    for label, v in COMPARED:
        best = [float("inf"), float("inf")]
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            loop(model, x, v, a.repeats)
            t1 = time.perf_counter()
            gradient_moments(model, x, v, a.repeats, 0)
            best = [min(best[0], t1 - t0), min(best[1], time.perf_counter() - t1)]
        total = [total[0] + best[0], total[1] + best[1]]
        print(f"| {label} | {best[0]:.2f} | {best[1]:.2f} | {best[0] / best[1]:.2f}x |")
    print(f"| all | {total[0]:.2f} | {total[1]:.2f} | {total[0] / total[1]:.2f}x |")


if __name__ == "__main__":
    main()
