"""Check AIS against quadrature on a 2-D-latent run: log p(x) of the first N test images both ways.

    python -m bench.run --variant sgvb_b --latent 2 --limit-train 5000 --epochs 2 --tracking-uri URI
    python scripts/check_ais_2d.py --tracking-uri URI --run-id RUN_ID [--images 100] [--steps 1000] [--chains 16]

Quadrature: bench.evaluation.quadrature on an n x n grid over [-6, 6]^2, n = 400, and again at 2n to show the grid
has converged (their difference is printed). AIS: bench.evaluation.ais with the given settings, the noise of
bench.evaluate --ais. Prints the mean and largest per-image |AIS - quadrature|; exits 1 if the mean difference
exceeds --tolerance (0.1 nats per image, the issue's bar).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.evaluation.ais import AISSettings, ais_log_likelihood
from bench.evaluation.quadrature import log_px_grid
from bench.evaluation.run_evaluation import open_run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=AISSettings().leapfrog)
    p.add_argument("--grid", type=int, default=400)
    p.add_argument("--tolerance", type=float, default=0.1)
    args = p.parse_args()
    _, _, model, _, test_x = open_run(args.tracking_uri, args.run_id, "cpu", None)
    model.eval()
    x = test_x[:args.images]
    t = time.perf_counter()
    exact = log_px_grid(model, x, n=args.grid)
    finer = log_px_grid(model, x, n=2 * args.grid)
    print(f"quadrature on {len(x)} images: grid {args.grid}^2 vs {2 * args.grid}^2 differ by at most "
          f"{float((exact - finer).abs().max()):.2e} nats ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    r = ais_log_likelihood(model, x, AISSettings(steps=args.steps, chains=args.chains, leapfrog=args.leapfrog),
                           progress=sys.stderr.isatty())
    d = r.log_px - finer
    print(f"AIS T={args.steps} C={args.chains} L={args.leapfrog} ({time.perf_counter() - t:.0f} s, acceptance "
          f"{r.accept:.2f}): NLL {r.nll:.3f}, quadrature NLL {-float(finer.mean()):.3f}")
    print(f"AIS - quadrature per image: mean {float(d.mean()):+.4f}, mean |.| {float(d.abs().mean()):.4f}, "
          f"largest |.| {float(d.abs().max()):.4f} nats; estimator noise of the mean {r.mc_stderr:.4f}")
    ok = abs(float(d.mean())) <= args.tolerance
    print("agrees within" if ok else "DISAGREES beyond", f"{args.tolerance} nats per image")
    return 0 if ok else 1


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
