"""IWAE-DReG's seconds per epoch against IWAE's at the same K (python benchmarks/dreg_speed.py).

Contenders, each one training epoch of the harness's step (index_select minibatch, dynamic binarisation, the
estimator, backward of the summed objective, fused Adam) on the seed's 784-400-20 Bernoulli model, batch 128,
run in interleaved rounds in this one process so that a shared machine slows them alike (quote the ratios):
- iwae: the plain IWAE gradient;
- iwae_dreg: DReG in one decoder pass (a gradient hook on z, variants.importance.iwae_dreg);
- iwae_dreg two-pass: the form it replaced, a second decoder pass at sg(z) for theta (_iwae_dreg_two_pass).

    python benchmarks/dreg_speed.py [--k 5] [--rounds 3] [--limit 60000] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core.data import load_mnist  # noqa: E402
from variants.estimators import LossTerms  # noqa: E402
from variants.importance import _iwae_dreg_two_pass, iwae, iwae_dreg  # noqa: E402
from variants.model import VAE  # noqa: E402
from variants.terms import draw  # noqa: E402

BATCH = 128


def two_pass(model: VAE, x: torch.Tensor, k: int, gen: torch.Generator) -> LossTerms:
    return _iwae_dreg_two_pass(model, draw(model, x, k, gen))


def epoch_seconds(estimator: Callable[..., LossTerms], train_x: torch.Tensor, k: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = VAE(latent=20, hidden=400).to(train_x.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=train_x.device.type in ("cpu", "cuda") or None)
    gen = torch.Generator(device=train_x.device).manual_seed(seed)
    perm = torch.randperm(len(train_x), device=train_x.device)
    if train_x.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(train_x), BATCH):
        xb = torch.bernoulli(train_x.index_select(0, perm[i:i + BATCH]), generator=gen)
        terms = estimator(model, xb, k, gen)
        opt.zero_grad(set_to_none=True)
        terms.objective.sum().backward()
        opt.step()
    if train_x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=60000, help="training images per epoch")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_x = load_mnist().train_x[:args.limit].to(device)
    contenders = {"iwae": iwae, "iwae_dreg (one pass)": iwae_dreg, "iwae_dreg (two-pass, before)": two_pass}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, est in contenders.items():
            times[name].append(epoch_seconds(est, train_x, args.k, seed=r))
            print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
    print(f"\n{device}, {torch.get_num_threads()} threads, K = {args.k}, {len(train_x)} images, {args.rounds} rounds; "
          "the ratio is the median of the per-round ratios (each round's contenders ran back to back)")
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times["iwae"], strict=True)]
        print(f"{name:30s} {statistics.median(ts):6.2f} s/epoch (median)   {statistics.median(ratios):.2f}x iwae "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")

if __name__ == "__main__":
    main()
