"""The training loop shared by every variant: epochs of minibatch steps, then the test metrics and pictures.
It knows nothing of MLflow: it logs through a Tracker.

Speed: MNIST lives on the device as one float32 tensor; a minibatch is an index_select of it, no
DataLoader, no per-image work. Per-batch loss sums accumulate on the device (no .item() per batch).
Reproducibility: each epoch draws its shuffle and its noise from streams keyed by (purpose, seed, epoch), so
an epoch's numbers depend only on the parameters it starts from: a resumed run matches an
uninterrupted one.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.core import interrupts
from bench.core.allocator import keep_freed_memory
from bench.core.config import TrainConfig
from bench.core.data import MNIST
from bench.core.interrupts import critical
from bench.core.rng import SHUFFLE, TRAIN_NOISE, generator
from bench.core.splits import BINARIZE_SEED, binarize, prepare_data, validation_data
from bench.errors import NonFiniteLoss
from bench.evaluation.images import save_grids
from bench.evaluation.snr import TRAINING_PREFIX, training_snr
from bench.evaluation.test_elbo import evaluate_test
from bench.tracking.names import COMPILE_TAG, TRAINING_SNR_ANALYSIS
from bench.tracking.tracker import NullTracker, Tracker
from bench.training.adam import Optimizer, make_adam
from bench.training.steps import CompiledStep, make_step
from variants.model import VAE
from variants.registry import Variant

CHECK_EVERY = 50  # batches between finiteness checks (each one syncs with the device)
CLOCK_EVERY = 4  # batches between clock reads, for the progress bar
BAR_SECONDS = 1.0  # the bar is redrawn at least this often (the issue asks for 2 s at most)


@dataclass
class TrainResult:
    model: VAE
    history: list[dict[str, float]]  # one dict of metrics per epoch trained in this call
    compile_seconds: float = 0.0  # --compile: the step's first call, compiling included (in epoch 1's seconds)


def build(variant: Variant, cfg: TrainConfig) -> tuple[VAE, Optimizer]:
    """The model (initialised from cfg.seed) and its Adam optimiser, on cfg.device: one fused kernel for the
    whole update (bench.training.adam: torch.optim.Adam(fused=True)'s numbers without importing torch._dynamo)."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = variant.build_model(cfg.latent).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    with critical():  # where torch.optim is used (mps), its first optimiser imports torch._dynamo: no signal inside
        opt = make_adam(params, cfg.lr, device)
    return model, opt


def split_epoch(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(the run's own curves, the SNR measured during training) of one epoch's metrics."""
    snr = {k: v for k, v in metrics.items() if k.startswith(TRAINING_PREFIX)}
    return {k: v for k, v in metrics.items() if k not in snr}, snr


def log_epoch(tracker: Tracker, metrics: dict[str, float], step: int) -> None:
    """One epoch's metrics: the curves on the run; the SNR (snr/train/...) on its analysis run "SNR during
    training", since slash sections on the run itself would come before its loss curves in MLflow's run page.
    The run's first: a resume that finds them at this step checks the analysis run's on its own."""
    curves, snr = split_epoch(metrics)
    tracker.log_metrics(curves, step=step)
    if snr:
        tracker.log_analysis_metrics(TRAINING_SNR_ANALYSIS, snr, step=step)


def train(
    variant: Variant,
    cfg: TrainConfig,
    data: MNIST,
    tracker: Tracker | None = None,
    start: dict[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    snr_every: int = 0,
) -> TrainResult:
    """Train ``variant`` for epochs (start["epoch"] + 1)..cfg.epochs; log each epoch to ``tracker``.

    ``start`` is a checkpoint dict (as given to ``tracker.save_checkpoint``) to resume from.
    Raises NonFiniteLoss when the loss stops being finite; KeyboardInterrupt passes through.
    ``snr_every`` N > 0: every N epochs, the gradient SNR on a fixed minibatch (snr/train/..., bench.evaluation.snr),
    logged into the run's analysis run (log_epoch); the checkpoint's metrics and the history hold it too.
    """
    tracker = tracker or NullTracker()
    device = torch.device(cfg.device)
    keep_freed_memory()  # the step's big tensors reuse freed heap instead of page-faulting (bench.core.allocator)
    model, opt = build(variant, cfg)
    first = 1
    if start is not None:
        model.load_state_dict(start["model"])
        opt.load_state_dict(start["optimizer"])
        first = start["epoch"] + 1
        if "torch_rng" in start:  # torch's global RNG as it was after that epoch (see the checkpoint below)
            torch.set_rng_state(start["torch_rng"])
    train_x, test_x = prepare_data(data, cfg, device)
    val_x = validation_data(data, cfg, device)
    n, bs = len(train_x), cfg.batch_size
    # The SNR's fixed minibatch: the first training images, binarised once with a fixed seed under dynamic.
    snr_x = binarize(train_x[:bs], BINARIZE_SEED + 2) if snr_every and cfg.binarize == "dynamic" else train_x[:bs]
    if snr_every:
        tracker.log_new_params({"snr_every": snr_every})
    step = make_step(variant, model, opt, cfg, log)
    compiled = step if isinstance(step, CompiledStep) else None
    told_eager = False  # COMPILE_TAG set, once a process: the run says when its compiled step went eager
    history: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="vae-bench-") as tmp:
        for epoch in range(first, cfg.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            gen = generator(device, TRAIN_NOISE, cfg.seed, epoch)
            perm = torch.randperm(n, generator=generator(torch.device("cpu"), SHUFFLE, cfg.seed, epoch)).to(device)
            sums = torch.zeros(2, device=device)
            graphed = compiled.graph_images if compiled else 0
            bar = tqdm(total=n, desc=f"epoch {epoch}/{cfg.epochs}", unit="img", disable=not progress,
                       leave=False, dynamic_ncols=True)
            shown = time.monotonic()
            for b, i in enumerate(range(0, n, bs)):
                interrupts.check()  # a signal whose KeyboardInterrupt something swallowed: stop here
                xb = train_x.index_select(0, perm[i:i + bs])  # ~3x faster than train_x[idx] on CPU
                if cfg.binarize == "dynamic":
                    xb = torch.bernoulli(xb, generator=gen)
                sums += step(xb, gen)
                # The bar moves at least every BAR_SECONDS of work: a clock read every few batches (no device sync);
                # the sync (the loss for the bar, the finiteness check) only when the bar is redrawn.
                if (b + 1) % CHECK_EVERY == 0 or (progress and (b + 1) % CLOCK_EVERY == 0
                                                  and time.monotonic() - shown >= BAR_SECONDS):
                    shown = time.monotonic()
                    seen = min(i + bs, n)
                    total = float(sums.sum())
                    if not math.isfinite(total):
                        raise NonFiniteLoss(f"training loss is {total} at epoch {epoch}, batch {b + 1}")
                    bar.update(seen - bar.n)
                    bar.set_postfix(loss=f"{total / seen:.2f}")
            bar.close()
            train_seconds = time.perf_counter() - t0
            recon, kld = (sums / n).tolist()
            if not math.isfinite(recon + kld):
                raise NonFiniteLoss(f"training loss is {recon + kld} at epoch {epoch}")
            model.eval()
            metrics = {"train_loss": recon + kld, "train_recon": recon, "train_kld": kld}
            # A run with a validation split (tuning) is evaluated on it, as the test set is otherwise: it never
            # sees the test set, so nothing chosen from it can have been chosen on test numbers.
            held_out, prefix = (test_x, "test") if val_x is None else (val_x, "val")
            metrics.update({f"{prefix}_{k[5:]}": v for k, v in evaluate_test(model, held_out).items()})
            if not math.isfinite(metrics[f"{prefix}_loss"]):
                raise NonFiniteLoss(f"{prefix} loss is {metrics[f'{prefix}_loss']} at epoch {epoch}")
            for path in save_grids(model, held_out, epoch, Path(tmp), cfg.seed):
                tracker.log_artifact(path, "images")
            metrics["train_samples_per_second"] = n / train_seconds
            if compiled is not None:  # a compile=True run says how much of each epoch the graph trained
                metrics["train_compiled_share"] = (compiled.graph_images - graphed) / n
            if snr_every and epoch % snr_every == 0:
                t_snr = time.perf_counter()
                metrics.update(training_snr(model, variant, snr_x))
                metrics[f"{TRAINING_PREFIX}seconds"] = time.perf_counter() - t_snr
            # The checkpoint carries the epoch's metrics, epoch_seconds among them: a process killed between the
            # two writes (SIGKILL, a store failure) loses nothing, as --resume logs them from the checkpoint.
            # Signals wait until both are written.
            metrics["epoch_seconds"] = time.perf_counter() - t0
            with critical():
                # torch_rng, torch's global RNG, restored on resume: the harness's own draws come from streams
                # keyed by (purpose, seed, epoch) and need no saved state; it is kept for anything that draws from
                # the global one (a user's variant), so that it too resumes where it stopped.
                tracker.save_checkpoint({"epoch": epoch, "model": model.state_dict(),
                                         "optimizer": opt.state_dict(), "metrics": metrics,
                                         "torch_rng": torch.get_rng_state()})
                log_epoch(tracker, metrics, step=epoch)
                if compiled is not None and compiled.fallback is not None and not told_eager:
                    tracker.set_tags({COMPILE_TAG: f"epoch {epoch}: {compiled.fallback}"})
                    told_eager = True
            history.append(metrics)
            log(f"====> Epoch: {epoch} Average loss: {metrics['train_loss']:.4f}  "
                f"(recon {recon:.2f} + kld {kld:.2f})  {prefix} loss: {metrics[f'{prefix}_loss']:.4f}  "
                f"[{metrics['epoch_seconds']:.2f} s]")
    model.eval()
    return TrainResult(model, history, getattr(step, "compile_seconds", 0.0))
