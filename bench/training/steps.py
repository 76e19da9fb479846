"""One training step: the variant's objective, its gradient, Adam. Eager (the default), or with ``--compile``
the whole step as one torch.compile graph.

Why compile: eager PyTorch pays a fixed cost per op, and on a CPU with fast matrix units that cost is most of a
step that is neither a product nor Adam (benchmarks/README.md, "The compiled step"). One graph lets inductor
fuse the elementwise work of the forward pass, the backward pass and the update into a few loops.

How the compiled step stays the harness's step:
- The gradient is autograd's: ``torch.func.grad`` of the variant's own objective, the same derivative formulas
  that ``.backward()`` runs, traced instead of executed op by op. No gradient is written by hand.
- The noise: a torch.Generator cannot run inside a graph, so each step's draws are made outside it, from the
  epoch's generator, in the shapes and order in which the estimator draws them (recorded once, on the first
  batch), and the estimator takes them inside (variants.terms.supplied_noise). The draws are the eager step's.
- Adam is FusedAdam's own state (bench.training.adam), updated in the graph as ``torch._fused_adam_`` computes
  it, so checkpoints load either way. Its bias corrections are computed once a step outside the graph, in double
  as that kernel computes them (inside it, inductor recomputed them for every 16 floats). Moments below float32's
  least normal are set to zero in the same loop, at every step, where adam.py's flush runs every 16th: free inside
  the update's loop, and no weight moves by it.
- Static shapes: one graph for the full batches. The last, shorter batch of an epoch runs eagerly.
- Checked before it is used: on the first batch, the traced gradient must match autograd's on the same draws.

A variant that cannot be compiled as one graph (a graph break, an autograd.Function that torch.func cannot run, a
draw from torch's global RNG, no compiler for the device) trains eagerly, with one line saying why. A graph whose
guards fail later (the step read Python state that has changed) is rebuilt up to twice; then the run trains eagerly
from that step, with one line (CompiledStep._steady). The run records either (bench.training.loop): the tag
COMPILE_TAG names the epoch and the reason, and each epoch's train_compiled_share the share of its images the graph
trained (CompiledStep.graph_images). Compiled and eager steps differ in the last bits (inductor orders the sums of
its fused loops differently), so a run resumed the other way does not match an uninterrupted one to the bit
(bench.training.resume says so); compiled resumed compiled does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from bench.core.config import TrainConfig
from bench.training.adam import LEAST_NORMAL, FusedAdam, Optimizer
from variants.model import VAE
from variants.registry import Variant
from variants.terms import record_draws, supplied_noise

Step = Callable[[Tensor, torch.Generator], Tensor]  # (batch, the epoch's generator) -> (recon sum, kld sum)
Draw = tuple[tuple[int, ...], torch.dtype, torch.device]
# The traced gradient against autograd's on the first batch, as max |difference| / max |autograd's| per parameter:
# rounding passes, another formula fails. Measured over 8 batches each: fp32 at most 3e-7 (sgvb_b) and 1e-5
# (iwae_dreg_k5, whose torch.func form is its two-pass one); bf16 0 to 4e-4 (sgvb_b) and 6.7e-3 (iwae_dreg_k5).
GRADIENT_RTOL = {"fp32": 1e-4, "bf16": 5e-2}
# Rebuilds of the graph that a run takes before it trains eagerly (CompiledStep._steady).
REBUILDS_ALLOWED = 2


def precision_context(cfg: TrainConfig) -> contextlib.AbstractContextManager[Any]:
    """bf16: autocast the matrix products (the losses and Adam stay float32)."""
    if cfg.precision == "bf16":
        return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eager_step(variant: Variant, model: VAE, opt: Optimizer, cfg: TrainConfig) -> Step:
    """The step as PyTorch runs it op by op: the objective summed over the batch (the seed's reduction='sum'),
    backward, Adam."""
    autocast = precision_context(cfg)  # made once, as the loop did: reused across steps

    def step(xb: Tensor, gen: torch.Generator) -> Tensor:
        with autocast:
            terms = variant.estimate(model, xb, gen)
        opt.zero_grad(set_to_none=True)
        terms.objective.sum().backward()
        opt.step()
        return torch.stack((terms.recon.sum(), terms.kld.sum())).detach()

    return step


class _Objective(nn.Module):
    """The variant's objective as a module, so that torch.func.functional_call can run it at given parameters."""

    def __init__(self, variant: Variant, model: VAE, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.variant, self.cfg = model, variant, cfg
        self.gen: torch.Generator | None = None  # the probe's draws; inside the graph the noise is supplied

    def forward(self, xb: Tensor) -> tuple[Tensor, Tensor]:
        with precision_context(self.cfg):
            terms = self.variant.estimate(self.model, xb, self.gen)
        return terms.objective.sum(), torch.stack((terms.recon.sum(), terms.kld.sum())).detach()


@contextlib.contextmanager
def _global_rng_kept(device: torch.device) -> Iterator[dict[str, bool]]:
    """Restores torch's global RNG (CPU, and the device's) on exit, having set ["drew"]: did anything draw?"""
    cuda = device.type == "cuda"
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None
    seen = {"drew": False}
    try:
        yield seen
    finally:
        seen["drew"] = not (torch.equal(torch.get_rng_state(), cpu_state)
                            and (cuda_state is None or torch.equal(torch.cuda.get_rng_state(device), cuda_state)))
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


class CompiledStep:
    """The step as one torch.compile graph (module docstring), with the eager step for the last short batch and
    for a variant that cannot be compiled. Call it as an eager step."""

    def __init__(self, variant: Variant, model: VAE, opt: Optimizer, cfg: TrainConfig,
                 log: Callable[[str], None] = print) -> None:
        self.variant, self.model, self.opt, self.cfg, self.log = variant, model, opt, cfg, log
        self.eager = eager_step(variant, model, opt, cfg)
        self.batch_size = cfg.batch_size
        self.compiled: Callable[..., Tensor] | None = None
        self.draws: list[Draw] = []
        self.fallback: str | None = None if isinstance(opt, FusedAdam) else "its optimiser is not FusedAdam"
        self.compile_seconds = 0.0
        self.names: list[str] = []  # the parameters the graph updates
        self.adam_step: Tensor | None = None  # Adam's step count (a tensor on the device), read by _run
        self.rebuilds = 0  # graphs built after the first, for Python state that changed (_steady)
        self.graph_images = 0  # images whose step ran as the graph (the run logs its share per epoch)

    def __call__(self, xb: Tensor, gen: torch.Generator) -> Tensor:
        if self.fallback is not None or len(xb) != self.batch_size:
            return self.eager(xb, gen)
        if self.compile_seconds:
            return self._steady(xb, self._noise(gen))
        return self._first(xb, gen)

    def _steady(self, xb: Tensor, noise: list[Tensor]) -> Tensor:
        """A step after the first. If the graph's guards fail (the step read Python state that has changed since
        it was traced: a plugin's schedule kept in a global, a flag flipped), dynamo would rebuild the graph,
        seconds each time, and after 8 rebuilds stop the run with a traceback. So the rebuild is counted: up to
        REBUILDS_ALLOWED of them are compiled (a flag flipped once costs seconds, not the run's speed); beyond,
        the run trains eagerly from this step, with one line saying why. Nothing has moved when the guards fail."""
        try:
            with torch.compiler.set_stance("fail_on_recompile"):  # ~8 us a step: the guards' failure is raised
                return self._run(xb, noise)
        except RuntimeError as e:
            if "fail_on_recompile" not in str(e):
                raise
            why = _guard_failure(e)
        self.rebuilds += 1
        if self.rebuilds <= REBUILDS_ALLOWED:
            t0 = time.perf_counter()
            try:
                sums = self._run(xb, noise)  # rebuilds the graph for the new state; on failure nothing has moved
            except Exception as e:  # the new state does not compile as one graph
                why = f"it does not compile as one graph after {why} ({type(e).__name__}: {_first_line(e)})"
            else:
                seconds = time.perf_counter() - t0
                self.compile_seconds += seconds
                self.log(f"--compile: the step was rebuilt in {seconds:.1f} s ({why})")
                return sums
        else:
            why = f"its step reads Python state that changes between steps ({why})"
        return self._eager_from_here(xb, noise, why, " from here")

    def _eager_from_here(self, xb: Tensor, noise: list[Tensor], why: str, when: str) -> Tensor:
        """This step and the rest of the run eagerly, on the draws this step has already taken from gen."""
        self.fallback = why
        self.log(f"--compile: {self.variant.name} trains eagerly{when}: {why}")
        with supplied_noise(noise):
            return self.eager(xb, None)  # type: ignore[arg-type]

    def _noise(self, gen: torch.Generator) -> list[Tensor]:
        return [torch.randn(shape, generator=gen, dtype=dtype, device=device) for shape, dtype, device in self.draws]

    def _run(self, xb: Tensor, noise: list[Tensor]) -> Tensor:
        """The graph, given Adam's bias corrections for this step, computed here once: in the graph, inductor
        recomputed them (two float pows) for every 16 floats of the update's loops, which made those loops 2-4x
        slower (benchmarks/README.md, "The compiled step, loop by loop")."""
        assert isinstance(self.opt, FusedAdam) and self.adam_step is not None
        corrections = bias_corrections(self.adam_step, self.opt.lr, self.opt.betas)
        sums = self.compiled(xb, noise, corrections)  # type: ignore[misc]
        self.graph_images += len(xb)
        return sums

    def _first(self, xb: Tensor, gen: torch.Generator) -> Tensor:
        """The first full batch: probe, build, compile and run, all timed as compile_seconds (torch._dynamo's
        import, seconds of CPU, included: it is paid once per process); or fall back, saying why."""
        t0 = time.perf_counter()
        self.log("--compile: compiling the training step (tens of seconds the first time on a machine, a few "
                 "after: inductor caches it on disk)")
        self.fallback = self._prepare(xb)
        if self.fallback is not None:
            self.log(f"--compile: {self.variant.name} trains eagerly: {self.fallback}")
            return self.eager(xb, gen)
        noise = self._noise(gen)
        try:
            sums = self._run(xb, noise)  # compiles; on failure nothing has moved
        except Exception as e:  # dynamo and inductor raise many kinds; KeyboardInterrupt passes through
            why = f"it does not compile as one graph ({type(e).__name__}: {_first_line(e)})"
            return self._eager_from_here(xb, noise, why, "")
        self.compile_seconds = time.perf_counter() - t0
        self.log(f"--compile: the step compiled in {self.compile_seconds:.1f} s")
        return sums

    def _prepare(self, xb: Tensor) -> str | None:
        """Records the estimator's draws and checks the traced gradient on this batch; builds the compiled
        function. Returns why the step cannot be compiled, or None. Moves no parameter and draws from no RNG the
        run uses (Adam's state is made as its first step would make it)."""
        device = torch.device(self.cfg.device)
        objective = _Objective(self.variant, self.model, self.cfg)
        params = {n: p for n, p in objective.named_parameters() if p.requires_grad}  # a fixed variance is not
        objective.gen = torch.Generator(device).manual_seed(0)
        with _global_rng_kept(device) as rng, record_draws() as draws:
            loss, _ = objective(xb.detach())
        objective.gen = None
        if rng["drew"]:
            return "it draws from torch's global RNG, which a compiled graph would draw differently"
        live = {n: g for n, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True),
                                     strict=True) if g is not None}
        noise = [torch.randn(shape, dtype=dtype, device=device) for shape, dtype, device in draws]
        frozen = {n: p.detach() for n, p in objective.named_parameters() if n not in live}

        def traced_loss(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
            with supplied_noise(list(noise)):
                return torch.func.functional_call(objective, {**p, **frozen}, (x,))

        with _global_rng_kept(device):
            with supplied_noise(list(noise)):
                loss = objective(xb)[0]
            reference = torch.autograd.grad(loss, [params[n] for n in live])
            try:
                traced = torch.func.grad(traced_loss, has_aux=True)({n: params[n].detach() for n in live}, xb)[0]
            except Exception as e:  # e.g. an autograd.Function without setup_context
                return f"torch.func cannot differentiate it ({type(e).__name__}: {_first_line(e)})"
        for (name, want), got in zip(zip(live, reference, strict=True), traced.values(), strict=True):
            scale = want.abs().max().item() or 1.0
            if not (got - want).abs().max().item() <= GRADIENT_RTOL[self.cfg.precision] * scale:
                return (f"the traced gradient of {name} differs from autograd's (it computes otherwise under "
                        "torch.func, or reads state that moved between the two)")
        self.draws = list(draws)
        self.compiled = self._build(objective, params, live, frozen)
        return None

    def _build(self, objective: _Objective, params: dict[str, Tensor], live: dict[str, Tensor],
               frozen: dict[str, Tensor]) -> Callable[..., Tensor]:
        opt = self.opt
        assert isinstance(opt, FusedAdam)
        index = {id(p): i for i, p in enumerate(opt.params)}
        names = [n for n in live if id(params[n]) in index]
        self.names = names
        weights = {n: params[n].detach() for n in names}  # the model's own storage: the graph updates it in place
        state = {n: opt._state(index[id(params[n])], params[n]) for n in names}
        beta1, beta2 = opt.betas
        eps = opt.eps
        self.adam_step = state[names[0]]["step"]  # every live parameter takes the same steps
        grad_and_sums = torch.func.grad(
            lambda p, x: torch.func.functional_call(objective, {**p, **frozen}, (x,)), has_aux=True)

        def whole_step(xb: Tensor, noise: list[Tensor], corrections: Tensor) -> Tensor:
            with supplied_noise(noise):
                grads, sums = grad_and_sums(weights, xb)
            step_size, bias_correction2_sqrt = corrections[0], corrections[1]  # lr / (1 - b1^t), sqrt(1 - b2^t)
            for n, g in grads.items():
                s, p = state[n], weights[n]
                m, v = s["exp_avg"], s["exp_avg_sq"]
                s["step"].add_(1)
                # Kingma & Ba (2015), Algorithm 1, in torch._fused_adam_'s order of operations:
                #   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
                #   theta <- theta - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.sub_(step_size * m / (v.sqrt() / bias_correction2_sqrt + eps))
                if opt.flush_subnormals:  # adam.py: a subnormal moment costs a microcode assist per multiply
                    m.masked_fill_(m.abs() < LEAST_NORMAL, 0.0)
                    v.masked_fill_(v.abs() < LEAST_NORMAL, 0.0)
            return sums

        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found"
        torch._dynamo.reset()  # one compiled step per process at a time: dynamo would stop compiling after 8 models
        cpu = torch.device(self.cfg.device).type == "cpu"
        return torch.compile(whole_step, dynamic=False, fullgraph=True, options={"cpp_wrapper": cpu})


def bias_corrections(step: Tensor, lr: float, betas: tuple[float, float]) -> Tensor:
    """Adam's step size lr / (1 - b1^t) and sqrt(1 - b2^t) for the step after Adam's count ``step``, in double as
    torch._fused_adam_ computes them, as 2 float32 on ``step``'s device."""
    if step.device.type == "cpu":  # reading the count costs nothing here, and Python's floats are doubles
        return corrections_on_host(step.item() + 1, lr, betas)
    return corrections_on_device(step, lr, betas)


def corrections_on_host(t: float, lr: float, betas: tuple[float, float]) -> Tensor:
    return torch.tensor([lr / (1 - betas[0] ** t), math.sqrt(1 - betas[1] ** t)])


def corrections_on_device(step: Tensor, lr: float, betas: tuple[float, float]) -> Tensor:
    """The same where a read of the count, or a copy from the host, would wait for a GPU's queued work (on the CPU
    these 7 small ops take 0.025 ms, the read and the copy 0.003)."""
    t = step.double() + 1
    return torch.stack((lr / (1 - betas[0] ** t), torch.sqrt(1 - betas[1] ** t))).float()


def make_step(variant: Variant, model: VAE, opt: Optimizer, cfg: TrainConfig,
              log: Callable[[str], None] = print) -> Step:
    """The training step that ``cfg.compile`` asks for."""
    return CompiledStep(variant, model, opt, cfg, log) if cfg.compile else eager_step(variant, model, opt, cfg)


def _guard_failure(e: RuntimeError) -> str:
    """The first failed guard in dynamo's fail_on_recompile message, whose lines read "- 0/0: <guard>  # <source
    line>  # <file>:<line> in <function>", as "<guard> no longer holds, <file>:<line> in <function>"."""
    for line in str(e).splitlines():
        line = line.strip()
        if line.startswith("- ") and ":" in line:
            guard, *notes = line.split(":", 1)[1].split("#")
            guard = re.sub(r"G\['__import_\w+'\]\.", "", " ".join(guard.split()))  # a plugin's global by its name
            where = notes[-1].split() if notes else []
            if len(where) >= 3 and where[1] == "in":
                return f"{guard[:120]} no longer holds, {where[0].rsplit('/', 1)[-1]} in {where[2]}"
            return f"{guard[:120]} no longer holds"
    return "a guard of the graph failed"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else "no message"
