"""bench.training.adam.FusedAdam against torch.optim.Adam(fused=True): the same numbers to the last bit, checkpoints
that load either way, and no torch._dynamo import (the reason it exists)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from bench.training.adam import FLUSH_EVERY, LEAST_NORMAL, FusedAdam, make_adam
from tests.conftest import CODE, REPO


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _steps(model: torch.nn.Module, opt: object, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 12, generator=gen)
        opt.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
        model(x).square().mean().backward()
        opt.step()  # type: ignore[attr-defined]


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("lr", [1e-3, 3e-2])
def test_fused_adam_is_bit_identical_to_torch_optim_fused_adam(lr: float) -> None:
    ours, theirs = _model(), _model()
    _steps(ours, FusedAdam(ours.parameters(), lr=lr), 25, seed=1)
    _steps(theirs, torch.optim.Adam(theirs.parameters(), lr=lr, fused=True), 25, seed=1)
    assert _same(ours, theirs)
    moved = sum((p - q).abs().sum() for p, q in zip(ours.parameters(), _model().parameters(), strict=True))
    assert moved > 0  # it trained


def _saved(state: dict) -> dict:
    """Through a file, as the run's checkpoint artifact is (weights_only, as bench.training.resume loads it)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_checkpoints_load_either_way_and_go_on_identically() -> None:
    """A torch.optim checkpoint (the stores written before this class) resumes in FusedAdam, and back."""
    ref = _model()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, fused=True)
    _steps(ref, ref_opt, 10, seed=2)

    mine = _model()
    mine.load_state_dict(ref.state_dict())
    mine_opt = FusedAdam(mine.parameters(), lr=1e-2)
    mine_opt.load_state_dict(_saved(ref_opt.state_dict()))
    back = _model()
    back.load_state_dict(ref.state_dict())
    back_opt = torch.optim.Adam(back.parameters(), lr=1e-2, fused=True)
    back_opt.load_state_dict(_saved(mine_opt.state_dict()))  # ours written, torch's read

    for model, opt in ((ref, ref_opt), (mine, mine_opt), (back, back_opt)):
        _steps(model, opt, 10, seed=3)
    assert _same(ref, mine) and _same(ref, back)
    assert float(mine_opt.state[0]["step"]) == 20.0


def test_a_state_of_another_shape_is_refused() -> None:
    opt = FusedAdam(_model().parameters())
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], fused=True)
    with pytest.raises(ValueError, match="does not match"):
        opt.load_state_dict(other.state_dict())


def test_make_adam_is_fused_on_cpu() -> None:
    assert isinstance(make_adam(_model().parameters(), 1e-3, torch.device("cpu")), FusedAdam)


def test_training_never_imports_torch_dynamo() -> None:
    """A fresh process builds the harness's model and optimiser and takes a step: torch._dynamo stays unimported."""
    code = ("import sys\nfrom bench.core.config import TrainConfig\nfrom bench.training.loop import build\n"
            "from variants.registry import get_variant\nimport torch\n"
            "model, opt = build(get_variant('sgvb_b'), TrainConfig(latent=2))\n"
            "x = torch.rand(8, 784)\nloss = model(x)[0].sum()\nloss.backward()\nopt.step()\n"
            "print('torch._dynamo' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**CODE, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def _steps_with_dead_inputs(model: torch.nn.Module, opt: object, n: int, live_for: int = 5, seed: int = 4) -> None:
    """Inputs 0-2 carry signal for `live_for` steps and are zero after: their weights' gradients stop (exactly 0),
    and m decays by β1 a step."""
    gen = torch.Generator().manual_seed(seed)
    for t in range(n):
        x = torch.randn(16, 12, generator=gen)
        if t >= live_for:
            x[:, :3] = 0.0
        opt.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
        model(x).square().mean().backward()
        opt.step()  # type: ignore[attr-defined]


def test_subnormal_moments_are_flushed_on_cpu_and_no_parameter_moves() -> None:
    """After ~800 steps without gradient, m of the dead inputs' weights is subnormal in torch's Adam; FusedAdam has
    set those entries to zero at a multiple of FLUSH_EVERY steps, and every parameter is still bit-identical."""
    n = 56 * FLUSH_EVERY  # 896 steps: 0.9**891 * |m| crosses 1.2e-38 for |m| below ~1e3
    ours, theirs = _model(), _model()
    ours_opt = FusedAdam(ours.parameters(), lr=1e-3)
    theirs_opt = torch.optim.Adam(theirs.parameters(), lr=1e-3, fused=True)
    _steps_with_dead_inputs(ours, ours_opt, n)
    _steps_with_dead_inputs(theirs, theirs_opt, n)

    dead_theirs = theirs_opt.state[theirs[0].weight]["exp_avg"][:, :3]
    subnormal = (dead_theirs != 0) & (dead_theirs.abs() < LEAST_NORMAL)
    assert subnormal.sum() > 0  # the case this is about: torch's Adam carries subnormals here
    assert torch.all(ours_opt.state[0]["exp_avg"][:, :3][subnormal] == 0)
    for s in ours_opt.state.values():
        for moment in (s["exp_avg"], s["exp_avg_sq"]):
            assert not torch.any((moment != 0) & (moment.abs() < LEAST_NORMAL))
    assert _same(ours, theirs)


def test_the_flush_waits_for_a_multiple_of_flush_every_steps_and_a_resumed_run_flushes_there_too() -> None:
    """Keyed to the step count (not to when the optimiser was built or loaded)."""
    model = _model()
    opt = FusedAdam(model.parameters(), lr=1e-3)
    _steps_with_dead_inputs(model, opt, 1, live_for=0)
    opt.state[0]["exp_avg"][:, :3] = 1e-39  # subnormals planted where the gradient is exactly 0
    _steps_with_dead_inputs(model, opt, FLUSH_EVERY - 2, live_for=0, seed=5)
    assert float(opt.state[0]["step"]) == FLUSH_EVERY - 1
    assert torch.all(opt.state[0]["exp_avg"][:, :3] != 0)  # 0.9**14 * 1e-39: still there, still subnormal

    resumed = _model()
    resumed.load_state_dict(model.state_dict())
    resumed_opt = FusedAdam(resumed.parameters(), lr=1e-3)
    resumed_opt.load_state_dict(_saved(opt.state_dict()))
    for o, m in ((opt, model), (resumed_opt, resumed)):
        _steps_with_dead_inputs(m, o, 1, live_for=0, seed=6)
        assert float(o.state[0]["step"]) == FLUSH_EVERY
        assert torch.all(o.state[0]["exp_avg"][:, :3] == 0)
    assert _same(model, resumed)
