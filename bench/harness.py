"""The training and evaluation loop shared by every variant. It knows nothing of MLflow.

Speed: MNIST lives on the device as one float32 tensor; a minibatch is an index_select of it, no
DataLoader, no per-image work. Per-batch loss sums accumulate on the device (no .item() per batch).
Reproducibility: each epoch draws its shuffle and its noise from generators seeded by (seed, epoch), so
an epoch's numbers depend only on the parameters it starts from: a resumed run matches an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from bench.data import MNIST
from bench.devices import accumulation_dtype
from bench.errors import UserError
from bench.images import save_grid
from bench.interrupts import critical
from bench.tracker import NullTracker, Tracker
from variants.estimators import analytic_kl
from variants.model import VAE
from variants.registry import Variant

EVAL_SEED = 20140101  # one fixed noise draw for every variant's test metrics: runs compare on equal terms
BINARIZE_SEED = 1998  # the static binarisation (and the test set's, under dynamic) is the same for all runs
PRECISIONS = ("fp32", "bf16")
BINARIZE = ("none", "static", "dynamic")
CHECK_EVERY = 50  # batches between finiteness checks (each one syncs with the device)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """Every harness setting that changes a run's numbers (each becomes a param of the run)."""

    latent: int = 20
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    binarize: str = "none"
    limit_train: int | None = None
    validation: int = 0  # training images held out (the last ones) for val_* metrics: tuning's split

    def __post_init__(self) -> None:
        checks = [
            (self.latent >= 1, f"latent size must be a positive integer, got {self.latent}"),
            (self.epochs >= 0, f"epochs must be 0 or more, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be a positive integer, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"learning rate must be a positive number, got {self.lr}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.binarize in BINARIZE, f"binarize must be one of {', '.join(BINARIZE)}"),
            (self.limit_train is None or self.limit_train >= 1, "limit-train must be a positive integer"),
            (self.validation >= 0, f"validation must be 0 or more images, got {self.validation}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def params(self) -> dict[str, Any]:
        return asdict(self)


def _generator(device: torch.device, *key: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)  # tuples of ints hash the same in every process
    return gen


def binarize(x: Tensor, seed: int) -> Tensor:
    """A fixed Bernoulli draw of the pixels (static binarisation), the same for every run on every device:
    drawn on the CPU (CPU and CUDA generators give different numbers for one seed), then moved."""
    return torch.bernoulli(x.cpu(), generator=_generator(torch.device("cpu"), seed)).to(x.device, x.dtype)


@torch.inference_mode()
def evaluate_test(model: VAE, x: Tensor, batch_size: int = 2000) -> dict[str, float]:
    """test_loss/recon/kld (analytic KL, one reparameterised sample, fixed seed) and test_mse.

    test_mse is the squared error of the decoder's mean, averaged over pixels and images: the scale on
    which a Bernoulli and a Gaussian decoder compare.
    """
    gen = _generator(x.device, EVAL_SEED)
    sums = torch.zeros(3, dtype=accumulation_dtype(x.device), device=x.device)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        mu, logvar = model.encode(xb)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, device=x.device)
        params = model.decode(z)
        recon = -model.likelihood.log_prob(xb, params)
        mse = (xb - model.likelihood.mean(params)).pow(2).mean(-1)
        sums += torch.stack((recon.sum(), analytic_kl(mu, logvar).sum(), mse.sum())).to(sums.dtype)
    recon, kld, mse = (sums / len(x)).tolist()
    return {"test_loss": recon + kld, "test_recon": recon, "test_kld": kld, "test_mse": mse}


@torch.inference_mode()
def save_grids(model: VAE, test_x: Tensor, epoch: int, folder: Path, seed: int) -> list[Path]:
    """The seed's two pictures: 8 test digits above their reconstructions, and 64 decodes of prior draws."""
    lik = model.likelihood
    x = test_x[:8]
    recon = lik.mean(model.decode(model.encode(x)[0]))
    z = torch.randn((64, model.latent), generator=_generator(test_x.device, seed, 64), device=test_x.device)
    samples = lik.mean(model.decode(z))
    paths = [folder / f"reconstruction_{epoch:03d}.png", folder / f"samples_{epoch:03d}.png"]
    save_grid(torch.cat([x, recon]), paths[0], nrow=8)
    save_grid(samples, paths[1], nrow=8)
    return paths


@dataclass
class TrainResult:
    model: VAE
    history: list[dict[str, float]]  # one dict of metrics per epoch trained in this call


def split_validation(data: MNIST, cfg: TrainConfig) -> tuple[Tensor, Tensor | None]:
    """The training images and the cfg.validation images held out from the end of the training set (None
    when 0): tuning selects on these, never on the test set. limit_train applies to what remains.
    Commands call it before they create a run: settings the data cannot meet are user errors."""
    n = len(data.train_x)
    if cfg.validation >= n:
        raise UserError(f"validation must leave training images: give fewer than {n}, got {cfg.validation}")
    left = n - cfg.validation
    if cfg.limit_train is not None and cfg.limit_train > left:
        raise UserError(f"limit-train {cfg.limit_train} is more than the {left} training images"
                        + (f" left after validation {cfg.validation}" if cfg.validation else "")
                        + f"; give at most {left}")
    train_x = data.train_x[:left][:cfg.limit_train]
    return train_x, (data.train_x[left:] if cfg.validation else None)


def validation_data(data: MNIST, cfg: TrainConfig, device: torch.device) -> Tensor | None:
    val_x = split_validation(data, cfg)[1]
    if val_x is None:
        return None
    val_x = val_x.to(device)
    return binarize(val_x, BINARIZE_SEED + 2) if cfg.binarize != "none" else val_x


def prepare_test(data: MNIST, cfg: TrainConfig, device: torch.device) -> Tensor:
    """The test images on ``device``, binarised once with a fixed seed when the run binarises."""
    test_x = data.test_x.to(device)
    return binarize(test_x, BINARIZE_SEED + 1) if cfg.binarize != "none" else test_x


def prepare_data(data: MNIST, cfg: TrainConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    train_x = split_validation(data, cfg)[0].to(device)
    test_x = prepare_test(data, cfg, device)
    if cfg.binarize == "static":
        train_x = binarize(train_x, BINARIZE_SEED)
    return train_x, test_x


def build(variant: Variant, cfg: TrainConfig) -> tuple[VAE, torch.optim.Optimizer]:
    """The model (initialised from cfg.seed) and its Adam optimiser, on cfg.device."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = variant.build_model(cfg.latent).to(device)
    fused = device.type in ("cpu", "cuda")  # one kernel for the whole update instead of one per tensor
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, fused=fused or None)
    return model, opt


def train(
    variant: Variant,
    cfg: TrainConfig,
    data: MNIST,
    tracker: Tracker | None = None,
    start: dict[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``variant`` for epochs (start["epoch"] + 1)..cfg.epochs; log each epoch to ``tracker``.

    ``start`` is a checkpoint dict (as given to ``tracker.save_checkpoint``) to resume from.
    Raises NonFiniteLoss when the loss stops being finite; KeyboardInterrupt passes through.
    """
    tracker = tracker or NullTracker()
    device = torch.device(cfg.device)
    model, opt = build(variant, cfg)
    first = 1
    if start is not None:
        model.load_state_dict(start["model"])
        opt.load_state_dict(start["optimizer"])
        first = start["epoch"] + 1
    train_x, test_x = prepare_data(data, cfg, device)
    val_x = validation_data(data, cfg, device)
    n, bs = len(train_x), cfg.batch_size
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    history: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="vae-bench-") as tmp:
        for epoch in range(first, cfg.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            gen = _generator(device, cfg.seed, epoch)
            perm = torch.randperm(n, generator=_generator(torch.device("cpu"), cfg.seed, epoch, 0)).to(device)
            sums = torch.zeros(2, device=device)
            bar = tqdm(total=n, desc=f"epoch {epoch}/{cfg.epochs}", unit="img", disable=not progress,
                       leave=False, dynamic_ncols=True)
            for b, i in enumerate(range(0, n, bs)):
                xb = train_x.index_select(0, perm[i:i + bs])  # ~3x faster than train_x[idx] on CPU
                if cfg.binarize == "dynamic":
                    xb = torch.bernoulli(xb, generator=gen)
                with autocast:
                    terms = variant.estimate(model, xb, gen)
                opt.zero_grad(set_to_none=True)
                terms.objective.sum().backward()  # summed over the batch, as the seed's reduction='sum'
                opt.step()
                sums += torch.stack((terms.recon.sum(), terms.kld.sum())).detach()
                if (b + 1) % CHECK_EVERY == 0:
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
            # Signals wait until both are written; if the store fails between them, --resume logs the metrics
            # from the checkpoint (bench.run).
            with critical():
                # torch_rng, torch's global RNG: the harness's own draws come from generators keyed by (seed,
                # epoch) and need no saved state; it is kept for anything that draws from the global one.
                tracker.save_checkpoint({"epoch": epoch, "model": model.state_dict(),
                                         "optimizer": opt.state_dict(), "metrics": metrics,
                                         "torch_rng": torch.get_rng_state()})
                metrics["epoch_seconds"] = time.perf_counter() - t0
                tracker.log_metrics(metrics, step=epoch)
            history.append(metrics)
            log(f"====> Epoch: {epoch} Average loss: {metrics['train_loss']:.4f}  "
                f"(recon {recon:.2f} + kld {kld:.2f})  {prefix} loss: {metrics[f'{prefix}_loss']:.4f}  "
                f"[{metrics['epoch_seconds']:.2f} s]")
    model.eval()
    return TrainResult(model, history)
