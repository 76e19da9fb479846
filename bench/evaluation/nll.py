"""Importance-sampled test log-likelihood: the IWAE bound with K samples from the encoder (Burda et al. 2015).

    log p(x) >= L_K(x) = log 1/K sum_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x),

with every log-density complete (the -J/2 log 2pi of p(z) and q(z|x), the likelihood's own constants).
L_K increases with K towards log p(x); -mean_x L_K(x) is the reported test NLL, an upper bound in
expectation. The decoder runs on (images x samples) rows at once: the cost is the two decoder GEMMs.

Any model with ``encode(x) -> (mu, logvar)``, ``decode(z) -> params``, ``likelihood.log_prob(x, params)``
and ``latent`` works (tests use a linear-Gaussian one whose log p(x) is known in closed form).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bench.core.devices import accumulation_dtype
from variants.estimators import LOG_2PI, log_normal_std

NLL_SEED = 5000  # fixed noise: the same model and data give the same test_nll
ROWS = 2000  # decoder rows (images x samples) per chunk: GEMMs near peak speed, and the logits (6 MB) stay in L3


@dataclass(frozen=True)
class NLLResult:
    nll: float  # -mean_x L_K(x), nats per image
    stderr: float  # standard error of that mean over the images
    samples: int
    log_px: Tensor  # L_K(x) per image, float64 [N]

    def metrics(self) -> dict[str, float]:
        return {"test_nll": self.nll, "test_nll_stderr": self.stderr}  # K is a setting, logged as a param and tag


def log_weights(model: nn.Module, x: Tensor, mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) at z_k = mu + sigma eps_k: [S, B] for eps [S, B, J]."""
    s, b, j = eps.shape
    z = mu + torch.exp(0.5 * logvar) * eps
    params = model.decode(z.reshape(s * b, j))
    params = params.view(s, b, *params.shape[1:])
    log_px_z = model.likelihood.log_prob(x, params)
    # log q(z|x) = -1/2 sum_j (log 2pi + log sigma_j^2 + eps_j^2), since (z - mu) / sigma = eps.
    log_qz = -0.5 * (LOG_2PI + logvar + eps.pow(2)).sum(-1)
    return log_px_z + log_normal_std(z) - log_qz


def _block_generator(device: torch.device, seed: int, block: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + block)  # noise per block of images: the same for any number of workers
    return gen


class Cancelled(Exception):
    """The estimate was stopped (Ctrl-C in the main thread): the workers give up between chunks."""


def _block(model: nn.Module, x: Tensor, mu: Tensor, logvar: Tensor, samples: int, rows: int,
           gen: torch.Generator, stop: threading.Event | None = None) -> Tensor:
    """L_K for a few images (their K samples in pieces of at most ``rows`` decoder rows): float64 [B]. Gives up
    between pieces once ``stop`` is set: with a huge K one block is minutes of work."""
    with torch.inference_mode():  # thread-local: entered in the worker
        log_w = torch.empty(samples, len(x), device=x.device, dtype=mu.dtype)
        per_chunk = max(1, min(samples, rows // len(x)))
        for k in range(0, samples, per_chunk):
            if stop is not None and stop.is_set():
                raise Cancelled
            n = min(per_chunk, samples - k)
            eps = torch.randn((n, len(x), mu.shape[-1]), generator=gen, device=x.device, dtype=mu.dtype)
            log_w[k:k + n] = log_weights(model, x, mu, logvar, eps)
        # log-mean-exp over the K samples, max-shifted (logsumexp), in float64 (float32 on mps)
        return torch.logsumexp(log_w.to(accumulation_dtype(x.device)), dim=0) - math.log(samples)


def iwae_log_likelihood(model: nn.Module, x: Tensor, samples: int, seed: int = NLL_SEED, rows: int = ROWS,
                        progress: bool = False, workers: int | None = None) -> Tensor:
    """L_K(x) for every image of x [N, D]: float64 [N]. Memory is bounded by ``rows`` decoder rows per worker.

    On CPU, ``workers`` threads (default: torch's thread count) each take whole blocks of images with one
    intra-op thread: no barrier per elementwise op, which on a shared machine is 4-7x faster than the
    same work spread over torch's threads (measured here). The result does not depend on ``workers``.
    """
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    with torch.inference_mode():
        mu, logvar = torch.cat([torch.cat(model.encode(x[i:i + 1000]), -1) for i in range(0, len(x), 1000)]
                               ).chunk(2, dim=-1)
    images = max(1, rows // samples)  # images per block; with K >= rows, one image and its K in pieces
    starts = range(0, len(x), images)
    if x.device.type != "cpu":
        workers = 1
    workers = workers or torch.get_num_threads()
    out = torch.empty(len(x), dtype=accumulation_dtype(x.device), device=x.device)

    stop = threading.Event()

    def run(b: int) -> Tensor:
        i = starts[b]
        return _block(model, x[i:i + images], mu[i:i + images], logvar[i:i + images], samples, rows,
                      _block_generator(x.device, seed, b), stop)

    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="nll") if workers > 1 else None
    try:
        with tqdm(total=len(x), desc=f"test NLL (K={samples})", unit="img", disable=not progress,
                  leave=False, dynamic_ncols=True) as bar:
            blocks = range(len(starts))
            for b, value in enumerate(pool.map(run, blocks) if pool else map(run, blocks)):
                out[starts[b]:starts[b] + len(value)] = value
                bar.update(len(value))
    finally:
        stop.set()  # on Ctrl-C (or any error): running blocks give up within one chunk, queued ones never start
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
    return out


def estimate_nll(model: nn.Module, x: Tensor, samples: int, seed: int = NLL_SEED, rows: int = ROWS,
                 progress: bool = False) -> NLLResult:
    """-mean_x L_K(x) over x with its standard error; the noise is fixed by ``seed``."""
    log_px = iwae_log_likelihood(model, x, samples, seed, rows=rows, progress=progress)
    stderr = float(log_px.std() / math.sqrt(len(log_px))) if len(log_px) > 1 else float("nan")
    return NLLResult(nll=-float(log_px.mean()), stderr=stderr, samples=samples, log_px=log_px.cpu())
