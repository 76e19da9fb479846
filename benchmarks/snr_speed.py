"""The SNR study's speed against the GEMM floor of its draws (python benchmarks/snr_speed.py).

For each K, times gradient_moments (R draws of IWAE's gradient on M images, the draws a batch dimension) and, in
the same process, interleaved, the floor: only the decoder's three matrix products per row (forward, input
gradient, weight gradient) for the same R x K x M rows, which every way of computing those gradients must do.
The encoder's products (M rows per draw) are left out of the floor: they are a 1/K share. Reports seconds, the
ratio to the floor, and the whole default study's projected time (4 estimators, DReG counted twice).

    python benchmarks/snr_speed.py [--ks 10,100,1000] [--repeats 10] [--images 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.evaluation import snr  # noqa: E402
from bench.evaluation.draws import MAX_ROWS, gradient_moments  # noqa: E402
from variants.model import VAE  # noqa: E402
from variants.registry import Variant  # noqa: E402


def gemm_floor(rows: int, hidden: int = 400, out: int = 784) -> float:
    """Seconds for the decoder's fc4 forward, input-gradient and weight-gradient products over ``rows`` rows, in
    chunks of MAX_ROWS like the study (fc3's, with 2-20 inputs, are negligible)."""
    chunk = min(rows, MAX_ROWS)
    h, w, g = torch.randn(chunk, hidden), torch.randn(out, hidden), torch.randn(chunk, out)
    t0 = time.perf_counter()
    for _ in range(max(1, rows // chunk)):
        h @ w.T
        g @ w
        g.T @ h
    return (time.perf_counter() - t0) * rows / (max(1, rows // chunk) * chunk)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ks", default="10,100,1000")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    model = VAE(latent=a.latent).eval()
    x = torch.bernoulli(torch.full((a.images, 784), 0.3), generator=torch.Generator().manual_seed(0))
    print(f"threads {torch.get_num_threads()}, M = {a.images}, R = {a.repeats}, latent {a.latent}, 784-400")
    print("| K | study s | GEMM floor s | ratio |\n| --- | --- | --- | --- |")
    per_row = []
    for k in map(int, a.ks.split(",")):
        v = Variant("iwae", "", "iwae", samples=k)
        gradient_moments(model, x, v, 2, 0)  # warm-up
        best, floor = float("inf"), float("inf")
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            gradient_moments(model, x, v, a.repeats, 0, groups=snr.GROUPS if a.repeats >= snr.GROUPS else 1)
            best = min(best, time.perf_counter() - t0)
            floor = min(floor, gemm_floor(a.repeats * k * a.images))
        per_row.append(best / (a.repeats * k * a.images))
        print(f"| {k} | {best:.2f} | {floor:.2f} | {best / floor:.2f}x |")
    rows = sum(snr.K_GRID) * snr.IMAGES * snr.REPEATS * 5  # iwae, stl, elbo, and DReG's two decoder passes
    print(f"projected default study (K {snr.K_GRID}, M {snr.IMAGES}, R {snr.REPEATS}): "
          f"{rows * per_row[-1] / 60:.1f} min at the largest K's seconds per row")


if __name__ == "__main__":
    main()
