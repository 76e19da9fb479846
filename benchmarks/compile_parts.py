"""Where a fresh process's compile goes: ``python benchmarks/compile_parts.py [--rounds 3]``.

``bench.run --compile`` pays its compile in the run's own process, and issue 21 counts it in the seconds per epoch
of a 10-epoch run. Each round runs, per precision, a fresh Python process that builds the seed's model and times,
in order: importing torch._dynamo, importing inductor (torch._inductor.compile_fx), the probe (the traced gradient
held to autograd's on one batch, CompiledStep._prepare), and the first call of the graph (dynamo's trace, then
inductor, which finds the graph in its disk cache unless TORCHINDUCTOR_CACHE_DIR is new). Within that first call,
dynamo's own counters give the trace (``bytecode_tracing``), the backend (``OutputGraph.call_user_compiler``:
AOT autograd and inductor's cache look-ups) and, inside it, ``CacheBase.get_system.triton_key``: inductor hashes
triton's install to key its cache, which imports triton where it is installed (CUDA builds of torch ship it),
even for a CPU graph. Prints a Markdown table: median and range of each part, seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PARTS = ["import torch._dynamo", "import inductor", "the probe", "the first call of the graph",
         "in that call: dynamo's trace", "in that call: the backend", "in the backend: triton's key", "total"]
COUNTERS = {"in that call: dynamo's trace": "bytecode_tracing", "in that call: the backend":
            "OutputGraph.call_user_compiler", "in the backend: triton's key": "CacheBase.get_system.triton_key"}


def measure(precision: str) -> dict[str, float]:
    """The parts of one compile of the seed's step in this process, seconds (the imports read ~0 if done)."""
    import torch

    from bench.core.config import TrainConfig
    from bench.core.data import load_mnist
    from bench.training.loop import build
    from bench.training.steps import CompiledStep
    from variants import get_variant

    cfg = TrainConfig(compile=True, precision=precision)
    variant = get_variant("sgvb_b")
    model, opt = build(variant, cfg)
    xb = load_mnist().train_x[:cfg.batch_size]
    t0 = time.perf_counter()
    import torch._dynamo  # noqa: F401
    t1 = time.perf_counter()
    import torch._inductor.compile_fx  # noqa: F401
    t2 = time.perf_counter()
    step = CompiledStep(variant, model, opt, cfg, log=lambda _: None)
    if step._prepare(xb) is not None:
        raise SystemExit(f"compile_parts.py: the seed's step does not compile ({precision})")
    torch._dynamo.utils.compilation_time_metrics.clear()  # dynamo's counters: this compile's only
    t3 = time.perf_counter()
    step._run(xb, step._noise(torch.Generator().manual_seed(0)))
    t4 = time.perf_counter()
    names, values = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
    counters = {n: float(v) for n, v in zip(names, values, strict=True) if v != ""}
    parts = dict(zip(PARTS[:4], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True))
    parts.update({part: counters.get(name, 0.0) for part, name in COUNTERS.items()})
    parts["total"] = t4 - t0
    return parts


def fresh(precision: str) -> dict[str, float]:
    """measure() in a fresh Python process."""
    done = subprocess.run([sys.executable, __file__, "--child", precision], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"compile_parts.py: the {precision} child failed: "
                         f"{(done.stderr.strip() or 'no output').splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(runs: dict[str, list[dict[str, float]]]) -> str:
    head = "| part | " + " | ".join(f"{p}, median (range), s" for p in runs) + " |"
    rows = [head, "| --- |" + " --- |" * len(runs)]
    for part in PARTS:
        cells = []
        for samples in runs.values():
            xs = [s[part] for s in samples]
            cells.append(f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})")
        rows.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    precisions = args.precisions.split(",")
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in precisions}
    for _ in range(args.rounds):
        for p in precisions:  # interleaved, so that the host's load falls on both alike
            runs[p].append(fresh(p))
    print(f"{args.rounds} fresh processes per precision, interleaved")
    print(table(runs))


if __name__ == "__main__":
    main()
