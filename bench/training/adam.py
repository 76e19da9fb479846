"""Adam as one fused kernel per step, without torch.optim's machinery.

torch.optim's Optimizer imports torch._dynamo the first time it is built (its methods are wrapped to be skipped
by the compiler): 2.5 s of CPU in every process that trains, a third of ``bench.run``'s start-up here. This
class calls the same kernel, ``torch._fused_adam_``, the way ``torch.optim.Adam(fused=True)`` does (one group,
float32 step counters on the device, the counters incremented just before the update), so the numbers are
bit-identical to it; its state_dict has torch.optim's layout, so checkpoints load either way
(tests/training/test_adam.py). Where no fused kernel exists (mps, ...), ``make_adam`` returns torch.optim.Adam.

The update, per parameter θ with gradient g at step t (Kingma & Ba 2015, Algorithm 1):
    m ← β1 m + (1 − β1) g;   v ← β2 v + (1 − β2) g²;   θ ← θ − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)

Subnormals, on the CPU: where g stops coming (a dead ReLU unit, a pixel that is dark in nearly every image), m
decays by β1 a step until it passes below float32's least normal number (1.2e-38) and spends ~150 steps as a
subnormal, where every multiply takes a microcode assist. On the seed's model a quarter of fc1's m sits there
from epoch 3 on, and epochs take 15-20% longer (benchmarks/README.md, "Subnormals"). Every FLUSH_EVERY steps the
subnormal entries of m and v are set to zero. That moves no weight: the update such an m gives is
lr · m / (√v + ε) < 1e-3 · 1.2e-38 / 1e-8 ≈ 1e-33, and θ − 1e-33 rounds back to θ for any |θ| above ~1e-26;
a later m or v computed from a flushed one differs from torch.optim's only below its own rounding unit while g is
normal-sized (tests/training/test_adam.py checks the parameters stay bit-identical). Keyed to the step count, so a
resumed run flushes where an uninterrupted one does.
GPUs handle subnormals at full speed; no flush there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

FUSED_DEVICES = ("cpu", "cuda")
FLUSH_EVERY = 16  # steps between flushes (CPU): 1.3 ms a flush on the seed's model, 0.08 ms a step (~2%)
LEAST_NORMAL = torch.finfo(torch.float32).tiny


class FusedAdam:
    """Adam (no weight decay, no amsgrad) over one list of parameters, updated by ``torch._fused_adam_``."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("FusedAdam got an empty parameter list")
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.state: dict[int, dict[str, Tensor]] = {}  # by the parameter's index, as torch.optim's state_dict
        self.flush_subnormals = self.params[0].device.type == "cpu"

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def _state(self, i: int, p: Tensor) -> dict[str, Tensor]:
        if i not in self.state:  # lazily, at the parameter's first gradient, as torch.optim does
            self.state[i] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                             "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return self.state[i]

    @torch.no_grad()
    def step(self) -> None:
        live = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        states = [self._state(i, p) for i, p in live]
        params = [p for _, p in live]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                           [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=self.lr,
                           beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                           maximize=False)
        if self.flush_subnormals and int(steps[0]) % FLUSH_EVERY == 0:
            for s in states:
                for moment in (s["exp_avg"], s["exp_avg_sq"]):
                    moment.masked_fill_(moment.abs() < LEAST_NORMAL, 0.0)  # also zeros, which stay zero

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Adam's layout (its param_group keys included), so either class loads the other's."""
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": True,
                 "decoupled_weight_decay": False, "params": list(range(len(self.params)))}
        return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("the optimizer state does not match this model's parameters")
        group = groups[0]
        if group.get("amsgrad") or group.get("weight_decay") or group.get("maximize"):
            raise ValueError("the optimizer state uses amsgrad, weight decay or maximize, which FusedAdam has not")
        self.lr, self.betas, self.eps = float(group["lr"]), tuple(map(float, group["betas"])), float(group["eps"])
        position = {pid: i for i, pid in enumerate(group["params"])}
        self.state = {}
        for pid, s in state_dict["state"].items():
            i = position[pid]
            p = self.params[i]
            self.state[i] = {"step": torch.as_tensor(s["step"], dtype=torch.float32).to(p.device).reshape(()).clone(),
                             "exp_avg": s["exp_avg"].to(device=p.device, dtype=p.dtype, copy=True),
                             "exp_avg_sq": s["exp_avg_sq"].to(device=p.device, dtype=p.dtype, copy=True)}


Optimizer = FusedAdam | torch.optim.Optimizer


def make_adam(params: Iterable[Tensor], lr: float, device: torch.device) -> Optimizer:
    """FusedAdam where the fused kernel runs (cpu, cuda); torch.optim.Adam elsewhere (mps: its foreach path)."""
    if device.type in FUSED_DEVICES:
        return FusedAdam(params, lr=lr)
    return torch.optim.Adam(list(params), lr=lr)
