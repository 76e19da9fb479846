"""Seconds per epoch of vae-bench's harness, side by side with the seed's classic loop and the GEMM floor.

    python benchmarks/speed.py                 # about 3-4 minutes on 2 CPU cores
    python benchmarks/speed.py --rounds 1 --epochs 1 --skip-classic

Every contender runs in this one process, in interleaved rounds, so a noisy machine slows all of them
alike; the figures to quote are the ratios. Contenders, all on the seed's configuration (784-400-20,
Bernoulli, estimator B, L=1, Adam 1e-3, batch 128, float32 unless said):
- classic: the seed's code (torchvision MNIST dataset + ToTensor, DataLoader, a train and a test pass,
  sample and reconstruction images each epoch), as in pytorch/examples vae/main.py;
- gemm floor (fp32, bf16): only the matrix products of one epoch's forward and backward passes at these
  shapes, in that precision;
- fused Adam alone: the harness's optimiser, one step per batch, with no model around it;
- test pass alone: the harness's per-epoch evaluation of the 10,000 test images (every contender has one);
- vae-bench (tracked): the harness with MLflow tracking into a SQLite store (metrics, image grids and
  the checkpoint every epoch);
- vae-bench (untracked): the same with a do-nothing tracker, to price tracking;
- vae-bench bf16 (tracked): --precision bf16;
- with --compile, vae-bench fp32 and bf16 (tracked, compiled): --compile (bench.training.steps), each epoch
  a fresh run that compiles its step again. Its epoch is timed without that compile; the compile is printed
  apart and counted as a 10-epoch run spreads it. The goals table counts the compile as a fresh
  ``python -m bench.run --compile`` pays it (torch._dynamo's and inductor's imports, the probe, the trace),
  read from that command's "compiled in" line, one subprocess per precision and round: in this process only
  the first compile pays the imports, and the rounds' compiles are what tuning's later trials pay.
  TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) makes the first compile a cold one;
- pythae (if importable): pythae 0.1.2's TrainingPipeline with the same 784-400-20 MLP, BCE, Adam 1e-3,
  batch 128, data given as in-memory arrays, one epoch (train + eval) per call. pythae is not a
  dependency; to include it: python -m venv --system-site-packages /tmp/pythae-venv &&
  /tmp/pythae-venv/bin/pip install --no-deps pythae imageio, then run this script with that python.

It ends with the speed goals (issues 2 and 21): what each asks for in seconds per epoch, the least any trainer
with Adam could take here (GEMM floor + Adam's steps + the test pass, each timed alone), and whether vae-bench
meets it; with --compile, also what issue 21's goals leave over a 10-epoch run for the compile and the rest.
benchmarks/manual_step.py times a hand-written step without autograd against the same floors.

--device (default auto: cuda, else mps, else cpu) puts the floors, Adam, the test pass and the harness on that
device, with the device synchronised before each clock read; the seed's loop and pythae stay on the CPU (they
are run as their own code has them), so on a GPU compare the harness with the floors, not with them.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's bench, installed or not

from bench.cli import quiet_libraries  # noqa: E402
from bench.core.allocator import OPT_OUT, keep_freed_memory  # noqa: E402
from bench.core.config import TrainConfig  # noqa: E402
from bench.core.data import MD5, bundled_dir, load_mnist  # noqa: E402
from bench.core.devices import resolve_device  # noqa: E402
from bench.evaluation.test_elbo import evaluate_test  # noqa: E402
from bench.tracking.mlflow_tracker import MlflowTracker  # noqa: E402
from bench.tracking.store import open_store  # noqa: E402
from bench.tracking.tracker import NullTracker  # noqa: E402
from bench.training.loop import build, train  # noqa: E402
from variants import get_variant  # noqa: E402

BATCH, HIDDEN, LATENT, N_TRAIN = 128, 400, 20, 60000
DEVICE = torch.device("cpu")  # set by --device in main()


def clock() -> float:
    """perf_counter after the device's queued work has finished (a GPU runs asynchronously)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    elif DEVICE.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


class SeedVAE(nn.Module):
    """The seed document's model, written out as it is there (separate fc21/fc22, sigmoid output)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def seed_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def classic_contender(root: Path, out: Path, seed: int = 1,
                      losses: list[dict[str, float]] | None = None) -> Callable[[], float]:
    """One epoch of the seed's loop per call; returns its seconds (train + test + images). With ``losses``, each
    epoch's average train and test loss (nats per image, as the seed prints them) is appended to it."""
    from torchvision import datasets, transforms
    from torchvision.utils import save_image

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in MD5:  # torchvision reads the uncompressed IDX files from MNIST/raw; nothing is downloaded
        with gzip.open(bundled_dir() / f"{stem}.gz") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor()),
        batch_size=BATCH, shuffle=True)
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(str(root), train=False, download=False, transform=transforms.ToTensor()),
        batch_size=BATCH, shuffle=False)
    torch.manual_seed(seed)
    model = SeedVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    epoch = [0]

    def run() -> float:
        epoch[0] += 1
        t0 = time.perf_counter()
        model.train()
        train_loss = test_loss = 0.0
        for data, _ in train_loader:
            opt.zero_grad()
            recon, mu, logvar = model(data)
            loss = seed_loss(recon, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()  # as the seed's loop does, every batch
            opt.step()
        model.eval()
        with torch.no_grad():
            for i, (data, _) in enumerate(test_loader):
                recon, mu, logvar = model(data)
                test_loss += seed_loss(recon, data, mu, logvar).item()
                if i == 0:
                    save_image(torch.cat([data[:8], recon.view(-1, 1, 28, 28)[:8]]), out / f"r{epoch[0]}.png")
            sample = torch.sigmoid(model.fc4(F.relu(model.fc3(torch.randn(64, 20)))))
            save_image(sample.view(64, 1, 28, 28), out / f"s{epoch[0]}.png")
        seconds = time.perf_counter() - t0
        if losses is not None:
            losses.append({"train_loss": train_loss / len(train_loader.dataset),
                           "test_loss": test_loss / len(test_loader.dataset)})
        return seconds

    return run


BATCH_SIZES = [BATCH] * (N_TRAIN // BATCH) + ([N_TRAIN % BATCH] if N_TRAIN % BATCH else [])  # 469 batches


def gemm_floor_contender(dtype: torch.dtype = torch.float32) -> Callable[[], float]:
    """The forward and backward matrix products of one epoch (469 batches) at the model's shapes."""
    layers = [(784, HIDDEN), (HIDDEN, 2 * LATENT), (LATENT, HIDDEN), (HIDDEN, 784)]  # (in, out)
    w = [(torch.randn(o, i) * 0.05).to(DEVICE, dtype) for i, o in layers]
    gw = [torch.empty(o, i, dtype=dtype, device=DEVICE) for i, o in layers]
    inputs = {b: [torch.rand(b, i).to(DEVICE, dtype) for i, _ in layers] for b in set(BATCH_SIZES)}  # layer inputs
    grads = {b: [torch.rand(b, o).to(DEVICE, dtype) for _, o in layers] for b in set(BATCH_SIZES)}  # output grads

    def run() -> float:
        t0 = clock()
        for b in BATCH_SIZES:
            for a, wi in zip(inputs[b], w, strict=True):
                torch.mm(a, wi.t())  # forward
            for k, (a, g) in enumerate(zip(inputs[b], grads[b], strict=True)):
                torch.mm(g.t(), a, out=gw[k])  # weight gradient
                if k > 0:
                    torch.mm(g, w[k])  # input gradient (the data needs none)
        return clock() - t0

    return run


def adam_floor_contender() -> Callable[[], float]:
    """The harness's optimiser alone: one epoch of fused Adam steps (469) on the seed's model, float32 state.

    Any trainer of this model with Adam pays this on top of the GEMMs, whatever precision its products use.
    """
    model, opt = build(get_variant("sgvb_b"), TrainConfig(device=DEVICE.type))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3

    def run() -> float:
        t0 = clock()
        for _ in BATCH_SIZES:
            opt.step()
        return clock() - t0

    return run


def test_pass_contender() -> Callable[[], float]:
    """The harness's per-epoch test pass alone (bench.evaluation.test_elbo.evaluate_test, 10,000 test images, fp32)."""
    model, _ = build(get_variant("sgvb_b"), TrainConfig(device=DEVICE.type))
    test_x = load_mnist().test_x.to(DEVICE)

    def run() -> float:
        t0 = clock()
        evaluate_test(model, test_x)  # ends in .tolist(): synchronised
        return clock() - t0

    return run


def pythae_contender(out: Path) -> Callable[[], float] | None:
    """One epoch per call of pythae's trainer on the seed's model, or None when pythae is not installed."""
    try:
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
        from pythae.pipelines import TrainingPipeline
        from pythae.trainers import BaseTrainerConfig
    except ImportError:
        return None
    for name in list(logging.root.manager.loggerDict):  # pythae's modules log at INFO on handlers of their own
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.ERROR)

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)

        def forward(self, x: torch.Tensor) -> ModelOutput:
            h = F.relu(self.fc1(x.reshape(-1, 784)))
            return ModelOutput(embedding=self.fc21(h), log_covariance=self.fc22(h))

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.fc4(F.relu(self.fc3(z)))).reshape(-1, 1, 28, 28))

    data = load_mnist()
    train_x = data.train_x.view(-1, 1, 28, 28).numpy()
    test_x = data.test_x.view(-1, 1, 28, 28).numpy()
    torch.manual_seed(1)
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    config = BaseTrainerConfig(output_dir=str(out / "pythae"), num_epochs=1, learning_rate=1e-3,
                               per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH, no_cuda=True)

    def run() -> float:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its bars
            TrainingPipeline(training_config=config, model=model)(train_data=train_x, eval_data=test_x)
        return time.perf_counter() - t0

    return run


def harness_contender(precision: str, tracked: bool, store: Path,
                      compiled: list[float] | None = None) -> Callable[[], float]:
    """One epoch of bench.training.loop.train per call (a fresh run each time), all in: the test pass, the
    image grids and, when tracked, the checkpoint, images and metrics logged to MLflow. Given ``compiled`` (a
    list), with --compile: each call's compile seconds are appended to it, and left out of the time returned."""
    data = load_mnist()
    variant = get_variant("sgvb_b")
    cfg = TrainConfig(epochs=1, precision=precision, device=DEVICE.type, compile=compiled is not None)
    client = open_store(f"sqlite:///{store / 'mlflow.db'}") if tracked else None

    def run() -> float:
        tracker = (MlflowTracker.start(client, "speed", f"speed-{precision}", cfg.params())
                   if client is not None else NullTracker())
        t0 = clock()
        result = train(variant, cfg, data, tracker, log=lambda _: None)
        seconds = clock() - t0
        if compiled is not None:
            compiled.append(result.compile_seconds)
            seconds -= result.compile_seconds
        return seconds

    return run


COMPILED_IN = re.compile(r"--compile: the step compiled in (\d+\.\d+) s")  # bench.training.steps's line


def fresh_compile_seconds(precision: str, folder: Path) -> float:
    """The compile as a fresh ``python -m bench.run --compile`` pays it, from its "compiled in" line: one epoch
    on 256 images (two full batches) of this checkout's bench, tracked into a store in ``folder``."""
    cmd = [sys.executable, "-m", "bench.run", "--variant", "sgvb_b", "--epochs", "1", "--limit-train", "256",
           "--compile", "--precision", precision, "--device", DEVICE.type, "--no-progress",
           "--tracking-uri", f"sqlite:///{folder / 'fresh-compile.db'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    found = COMPILED_IN.search(done.stdout)
    if done.returncode != 0 or found is None:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"speed.py: bench.run --compile --precision {precision} printed no compile time "
                         f"(exit {done.returncode}): {last}")
    return float(found.group(1))


def slack_seconds(least: float, ratio: float, epochs: int = 10) -> float:
    """What a goal of ``ratio`` x the least possible leaves, over ``epochs`` epochs, for everything above the
    least possible: the step's own overhead, tracking and, for a compiled step, its compile."""
    return (ratio - 1) * least * epochs


FLOOR_FP32, FLOOR_BF16 = "gemm floor (fp32)", "gemm floor (bf16)"
ADAM, TEST_PASS = "fused Adam alone", "test pass alone"
CLASSIC, PYTHAE = "classic seed loop", "pythae 0.1.2"
TRACKED = {"fp32": "vae-bench fp32, tracked", "bf16": "vae-bench bf16, tracked"}
COMPILED = {"fp32": "vae-bench fp32, tracked, compiled", "bf16": "vae-bench bf16, tracked, compiled"}
GOAL_RATIOS = {"fp32": 1.15, "bf16": 1.3}  # issue 21's, against each precision's least possible


def least_possible(med: dict[str, float]) -> dict[str, float]:
    """The least seconds per epoch any trainer with Adam could take here, by precision: the GEMM floor of that
    precision + Adam's steps + the test pass, each timed alone in this run (issue 21's goals are ratios to it)."""
    rest = med[ADAM] + med[TEST_PASS]
    return {"fp32": med[FLOOR_FP32] + rest, "bf16": med[FLOOR_BF16] + rest}


def goals_table(med: dict[str, float], compile_seconds: dict[str, float] | None = None) -> list[list[str]]:
    """Each speed goal: the seconds per epoch it asks for, the least any trainer could take here (GEMM floor
    plus Adam's steps plus the test pass, each timed alone in this run), what vae-bench takes, and whether
    the goal is met. With ``compile_seconds`` (by precision), issue 21's goals again for the compiled step, its
    compile spread over a 10-epoch run."""
    bounds = least_possible(med)
    goals = [(f"{r}x the least possible, {p} (issue 21)", p, r * bounds[p]) for p, r in GOAL_RATIOS.items()]
    goals.append(("1.3x the fp32 GEMM floor", "fp32", 1.3 * med[FLOOR_FP32]))
    if CLASSIC in med:
        goals += [("4x the seed's loop, fp32", "fp32", med[CLASSIC] / 4),
                  ("7x the seed's loop, bf16", "bf16", med[CLASSIC] / 7)]
    if PYTHAE in med:
        goals.append(("2.5x pythae, fp32", "fp32", med[PYTHAE] / 2.5))
    for precision, seconds in (compile_seconds or {}).items():
        goals.append((f"{goals[precision == 'bf16'][0]}, compiled, {seconds:.1f} s compile / 10 epochs", precision,
                      goals[precision == "bf16"][2]))
    rows = []
    for goal, precision, needs in goals:
        ours = med[TRACKED[precision]]
        if "compiled" in goal:
            ours = med[COMPILED[precision]] + (compile_seconds or {})[precision] / 10
        rows.append([goal, f"{needs:.2f}", f"{bounds[precision]:.2f}", "yes" if bounds[precision] <= needs else "no",
                     f"{ours:.2f}", f"{ours / bounds[precision]:.2f}x", "yes" if ours <= needs else "no"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each contender runs one epoch a round")
    ap.add_argument("--skip-classic", action="store_true", help="leave out the seed's loop (slowest)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, mps")
    ap.add_argument("--compile", action="store_true", help="also time the compiled step (bench.run --compile)")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's malloc thresholds as they are (the harness raises them: bench.core.allocator)")
    args = ap.parse_args()
    quiet_libraries()
    # Every contender runs under the allocator setting the harness's train() makes, from the first warm-up on.
    if args.system_malloc:
        os.environ[OPT_OUT] = "system"  # train() then leaves malloc alone too
    print("allocator:", "glibc defaults" if args.system_malloc else
          "freed memory kept" if keep_freed_memory() else "unchanged (not glibc, or MALLOC_* set)")
    global DEVICE
    DEVICE = torch.device(resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vae-bench-speed-") as tmp:
        tmp_path = Path(tmp)
        contenders: dict[str, Callable[[], float]] = {
            FLOOR_FP32: gemm_floor_contender(), FLOOR_BF16: gemm_floor_contender(torch.bfloat16),
            ADAM: adam_floor_contender(), TEST_PASS: test_pass_contender()}
        if not args.skip_classic:
            contenders[CLASSIC] = classic_contender(tmp_path / "data", tmp_path)
        pythae = pythae_contender(tmp_path)
        if pythae is not None:
            contenders[PYTHAE] = pythae
        contenders["vae-bench fp32, untracked"] = harness_contender("fp32", False, tmp_path)
        contenders[TRACKED["fp32"]] = harness_contender("fp32", True, tmp_path)
        contenders[TRACKED["bf16"]] = harness_contender("bf16", True, tmp_path)
        compiles: dict[str, list[float]] = {"fp32": [], "bf16": []}
        if args.compile:
            for p, name in COMPILED.items():
                contenders[name] = harness_contender(p, True, tmp_path, compiles[p])
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for name, run in contenders.items():  # warm-up: imports, kernel selection (bf16), first artifacts
            if name != CLASSIC:
                print(f"warm-up: {name}: {run():.2f} s", flush=True)
        fresh_runs: dict[str, list[float]] = {p: [] for p in COMPILED} if args.compile else {}
        for r in range(args.rounds):
            for name, run in contenders.items():
                times[name].append(run())
                print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
            for p, seconds in fresh_runs.items():
                seconds.append(fresh_compile_seconds(p, tmp_path))
                print(f"round {r + 1}: a fresh bench.run --compile --precision {p} compiled in {seconds[-1]:.1f} s",
                      flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    floor, classic, pythae_s = med[FLOOR_FP32], med.get(CLASSIC), med.get(PYTHAE)
    rows = []
    for name, m in med.items():
        rows.append([name, f"{m:.2f}", f"{min(times[name]):.2f}", f"{m / floor:.2f}x",
                     f"{classic / m:.1f}x" if classic else "-", f"{pythae_s / m:.1f}x" if pythae_s else "-"])
    print()
    print(f"torch {torch.__version__}, device {DEVICE}, {torch.get_num_threads()} threads, {args.rounds} rounds "
          "(median and best seconds per epoch)")
    print(tabulate(rows, headers=["contender", "s/epoch (median)", "best", "vs GEMM floor", "speed-up vs classic",
                                     "vs pythae"]))
    untracked, tracked = med["vae-bench fp32, untracked"], med[TRACKED["fp32"]]
    print(f"\ncost of tracking (fp32): {100 * (tracked / untracked - 1):+.1f}% per epoch")
    fresh = {p: statistics.median(seconds) for p, seconds in fresh_runs.items()}
    bounds = least_possible(med)
    for p, seconds in compiles.items():
        if seconds:  # the warm-up's, then one per round
            warm = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
            ratio = GOAL_RATIOS[p]
            print(f"compiled {p}: a fresh bench.run --compile compiled in {fresh[p]:.1f} s (median of "
                  f"{', '.join(f'{s:.1f}' for s in fresh_runs[p])}; torch._dynamo's and inductor's imports "
                  f"included), this process in {seconds[0]:.1f} s in its warm-up and {warm:.1f} s a round after (as "
                  f"tuning's later trials pay it). Counted in a 10-epoch run: {med[COMPILED[p]] + fresh[p] / 10:.2f} "
                  f"s/epoch from a fresh process, {med[COMPILED[p]] + warm / 10:.2f} in one that has compiled once. "
                  f"Over 10 epochs, {ratio}x the least possible leaves {slack_seconds(bounds[p], ratio):.1f} s above "
                  f"it for the compile and all the rest of the harness's time together")
    print("\nspeed goals (s/epoch); least possible = GEMM floor of that precision + Adam alone + test pass alone:")
    print(tabulate(goals_table(med, fresh), headers=["goal", "needs", "least possible", "reachable", "vae-bench",
                                            "vae-bench / least possible", "met"]))


if __name__ == "__main__":
    main()
