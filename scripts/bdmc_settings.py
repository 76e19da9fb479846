"""The BDMC gap of candidate AIS settings on one trained run: which cheaper setting still bounds AIS's error.

    python scripts/bdmc_settings.py --tracking-uri URI --run-id RUN_ID [--images 100] \\
        --setting encoder:300:4 --setting encoder:1000:4 [--setting START:T:C[:L]] [--threads 2]

For each setting (start prior|encoder, T temperatures, C chains, L leapfrog steps, default 5), forward and reverse AIS
(bench.evaluation.ais.bdmc, the noise of bench.evaluate --bdmc) on M images simulated from the run's model; prints
the mean gap upper - lower per image, its standard error over the M images, the upper end of the one-sided 95%
interval (mean + 1.645 se) and the 95% two-sided one, and the seconds it took. Logs nothing: a study of settings,
not of the model. Exits 1 if no setting's one-sided upper end is below --bar (0.1 nats per image, the issue's).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.evaluation.ais import AISSettings, bdmc
from bench.evaluation.run_evaluation import open_run


def parse_setting(text: str) -> AISSettings:
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] not in ("prior", "encoder"):
        raise argparse.ArgumentTypeError(f"{text!r}: give START:T:C or START:T:C:L, START prior or encoder")
    try:
        nums = [int(v) for v in parts[1:]]
        return AISSettings(start=parts[0], steps=nums[0], chains=nums[1],
                           **({"leapfrog": nums[2]} if len(nums) == 3 else {}))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--images", type=int, default=100, help="M, images simulated from the model (default 100)")
    p.add_argument("--setting", type=parse_setting, action="append", required=True, metavar="START:T:C[:L]")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--bar", type=float, default=0.1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _, run, model, _, _ = open_run(args.tracking_uri, args.run_id, "cpu", None)
    model.eval()
    print(f"run {args.run_id} ({run.info.run_name}); M = {args.images} simulated images; {args.threads} threads")
    print("| start | T | C | L | M | BDMC gap (nats/image) | one-sided 95% upper | 95% interval | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    best = float("inf")
    for s in args.setting:
        t = time.perf_counter()
        r = bdmc(model, args.images, s, progress=sys.stderr.isatty())
        secs = time.perf_counter() - t
        upper = r.gap + 1.645 * r.gap_stderr
        best = min(best, upper)
        print(f"| {s.start} | {s.steps} | {s.chains} | {s.leapfrog} | {args.images} | {r.gap:.3f} ± "
              f"{r.gap_stderr:.3f} | {upper:.3f} | [{r.gap - 1.96 * r.gap_stderr:.3f}, "
              f"{r.gap + 1.96 * r.gap_stderr:.3f}] | {secs:.0f} |", flush=True)
    ok = best < args.bar
    print(("a setting's" if ok else "NO setting's") + f" one-sided 95% upper end is below {args.bar} nats per image")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
