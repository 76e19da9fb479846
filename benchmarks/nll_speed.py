"""Seconds for the importance-sampled test NLL (bench.nll), side by side with its GEMM floor.

    python benchmarks/nll_speed.py                       # K=1000 over all 10,000 test images: minutes
    python benchmarks/nll_speed.py --images 1000 --rounds 3

The floor is the decoder's two matrix products (z -> 400 -> 784) alone for the same images x samples
rows (the encoder's cost is 1/K of it), ~6.4 TFLOP at K=1000 over 10,000 images. Both run in this one
process, in interleaved rounds, so a shared machine slows them alike; the figure to quote is the ratio.
Times are scaled to the full test set when --images is smaller.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bench, installed or not

from bench.core.data import load_mnist  # noqa: E402
from bench.core.splits import BINARIZE_SEED, binarize  # noqa: E402
from bench.evaluation.nll import ROWS, estimate_nll  # noqa: E402
from variants.model import VAE  # noqa: E402

FULL = 10_000


def gemm_floor(model: VAE, rows: int, chunk: int = ROWS) -> float:
    """Seconds for the decoder GEMMs over ``rows`` latent points, in chunks like bench.nll's, run the faster
    of its two ways: one thread per worker (as bench.nll does on CPU), and torch's intra-op threads."""
    z = torch.randn(chunk, model.latent)
    w3, b3, w4, b4 = model.fc3.weight, model.fc3.bias, model.fc4.weight, model.fc4.bias

    def work(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                torch.addmm(b4, F.relu(torch.addmm(b3, z, w3.t())), w4.t())

    threads, n = torch.get_num_threads(), rows // chunk
    t = time.perf_counter()
    work(n)
    intra = time.perf_counter() - t
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, [n // threads + (i < n % threads) for i in range(threads)]))
        per_worker = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    return min(intra, per_worker)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1000, help="K (default 1000)")
    p.add_argument("--images", type=int, default=FULL, help="test images (default all 10,000)")
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(0)
    model = VAE(latent=args.latent).eval()  # the cost does not depend on the weights
    x = binarize(load_mnist().test_x[:args.images], BINARIZE_SEED + 1)
    scale = FULL / len(x)
    flops = 2 * args.samples * FULL * (args.latent * 400 + 400 * 784)
    print(f"K={args.samples}, {len(x)} images (scaled x{scale:g} to {FULL}); decoder GEMMs {flops / 1e12:.2f} TFLOP; "
          f"{torch.get_num_threads()} threads")
    floors, nlls = [], []
    for r in range(args.rounds):
        floors.append(gemm_floor(model, args.samples * len(x)) * scale)
        t = time.perf_counter()
        result = estimate_nll(model, x, args.samples, progress=sys.stderr.isatty())
        nlls.append((time.perf_counter() - t) * scale)
        print(f"round {r + 1}: GEMM floor {floors[-1]:.1f} s ({flops / floors[-1] / 1e9:.0f} GFLOP/s), "
              f"NLL {nlls[-1]:.1f} s, ratio {nlls[-1] / floors[-1]:.2f}  (nll {result.nll:.2f})", flush=True)
    f, n = statistics.median(floors), statistics.median(nlls)
    print(f"median: GEMM floor {f:.1f} s, NLL {n:.1f} s, ratio {n / f:.2f}")


if __name__ == "__main__":
    main()
