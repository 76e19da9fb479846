"""Seconds for AIS (bench.evaluation.ais) against the GEMM floor of the same decoder passes, forward and backward.

    python benchmarks/ais_speed.py                                  # T=50 on 256 images x 16 chains, scaled
    python benchmarks/ais_speed.py --steps 100 --images 512 --rounds 3

Every HMC transition evaluates log p(x, z) and its gradient in z at L leapfrog points for every (image, chain) row:
the decoder's two GEMMs forward (z -> 400 -> 784) and two backward (784 -> 400 -> z; no weight gradients). The floor
is those four matrix products alone, T x L times over the same rows, in chunks of bench.evaluation.ais.ROWS. Both
run in this one process in interleaved rounds, so a shared machine slows them alike: the figure is the ratio.
Times are scaled to --scale-images images at --scale-steps temperatures (the defaults: 1,000 and 1,000).
The allocator setting is process-wide, so to price it run the script with and without --system-malloc, alternately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bench, installed or not

from bench.core.allocator import OPT_OUT  # noqa: E402
from bench.core.data import load_mnist  # noqa: E402
from bench.core.splits import BINARIZE_SEED, binarize  # noqa: E402
from bench.evaluation.ais import ROWS, AISSettings, ais_log_likelihood  # noqa: E402
from variants.model import VAE  # noqa: E402


def gemm_floor(model: VAE, rows: int, passes: int) -> float:
    """Seconds for ``passes`` forward + backward decoder GEMM pairs over ``rows`` rows, in chunks of ROWS."""
    w3, b3, w4, b4 = model.fc3.weight, model.fc3.bias, model.fc4.weight, model.fc4.bias
    chunk = min(rows, ROWS)
    z = torch.randn(chunk, model.latent)
    g = torch.randn(chunk, 784)
    t = time.perf_counter()
    with torch.inference_mode():
        for _ in range(passes * max(1, rows // chunk)):
            h = F.relu(torch.addmm(b3, z, w3.t()))
            torch.addmm(b4, h, w4.t())
            (g @ w4).mul_(h > 0) @ w3
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=AISSettings().leapfrog)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--scale-images", type=int, default=1000)
    p.add_argument("--scale-steps", type=int, default=1000)
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc thresholds as they are (AIS raises them: bench.core.allocator)")
    args = p.parse_args()
    if args.system_malloc:
        os.environ[OPT_OUT] = "system"  # run_ais then leaves malloc alone
    torch.manual_seed(0)
    model = VAE(latent=args.latent).eval()  # the cost does not depend on the weights
    x = binarize(load_mnist().test_x[:args.images], BINARIZE_SEED + 1)
    scale = (args.scale_images / len(x)) * (args.scale_steps / args.steps)
    rows = len(x) * args.chains
    settings = AISSettings(steps=args.steps, chains=args.chains, leapfrog=args.leapfrog)
    print(f"AIS T={args.steps} C={args.chains} L={args.leapfrog} on {len(x)} images ({rows} rows), times scaled "
          f"x{scale:g} to {args.scale_images} images at T={args.scale_steps}; {torch.get_num_threads()} threads")
    floors, times = [], []
    for r in range(args.rounds):
        t = time.perf_counter()  # AIS first: in round 1 it meets its big blocks in a fresh process, as `evaluate` does
        ais_log_likelihood(model, x, settings)
        times.append((time.perf_counter() - t) * scale)
        floors.append(gemm_floor(model, rows, args.steps * args.leapfrog) * scale)
        print(f"round {r + 1}: GEMM floor {floors[-1]:.0f} s, AIS {times[-1]:.0f} s, "
              f"ratio {times[-1] / floors[-1]:.2f}", flush=True)
    f, a = statistics.median(floors), statistics.median(times)
    print(f"median: GEMM floor {f:.0f} s, AIS {a:.0f} s ({a / 60:.1f} min), ratio {a / f:.2f}")


if __name__ == "__main__":
    main()
