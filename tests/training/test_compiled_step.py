"""--compile (bench.training.steps.CompiledStep): the whole step as one torch.compile graph takes the eager step's
draws, follows autograd's gradient and Adam's update to float rounding, resumes to the bit, and a variant it
cannot compile trains eagerly (to the bit) with one line saying why. Each compiled configuration costs seconds
of inductor the first time on a machine (its disk cache serves later runs)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from torch import Tensor

from bench.cli import main_guard
from bench.core.config import TrainConfig
from bench.core.data import MNIST
from bench.run import PROG
from bench.run import main as run_main
from bench.tracking.names import COMPILE_TAG
from bench.tracking.tracker import MemoryTracker
from bench.training import steps
from bench.training.loop import build, train
from bench.training.steps import CompiledStep, eager_step
from variants import get_variant, registry
from variants.estimators import ESTIMATORS, sgvb_b
from variants.registry import Variant
from variants.terms import LossTerms

pytestmark = pytest.mark.usefixtures("one_thread")
BATCH = 32


def copy_state(model: Any, opt: Any, into_model: Any, into_opt: Any) -> None:
    with torch.no_grad():
        for p, q in zip(model.parameters(), into_model.parameters(), strict=True):
            q.copy_(p)
        for i, s in opt.state.items():
            for key, value in s.items():
                into_opt.state[i][key].copy_(value)


def relative_gap(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize(("name", "precision"), [("sgvb_b", "fp32"), ("sgvb_b", "bf16"), ("iwae_dreg_k5", "fp32")])
def test_each_compiled_step_follows_the_eager_step_from_the_same_weights(name: str, precision: str,
                                                                         mnist: MNIST) -> None:
    """Step by step from the same weights and Adam state (a free-running pair would part where a ReLU unit sits
    on the edge of 0): the same draws from the generator and the batch's sums; the gradient, read from Adam's
    moments, autograd's to float rounding (bf16: to bf16 rounding); the weights moved by Adam's update of the
    compiled step's own moments. The weights are not held to the eager step's directly: Adam's first steps move
    each weight by about lr * sign(g), so where g is near 0 its rounding decides a whole lr. A short batch in the
    middle runs eagerly, and the graph's bias corrections after it count its step."""
    variant = get_variant(name)
    cfg = TrainConfig(batch_size=BATCH, precision=precision, compile=True)
    eager_model, eager_opt = build(variant, cfg)
    model, opt = build(variant, cfg)
    lines: list[str] = []
    eager, compiled = eager_step(variant, eager_model, eager_opt, cfg), CompiledStep(variant, model, opt, cfg,
                                                                                   lines.append)
    gen_e, gen_c = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    tol = 2e-2 if precision == "bf16" else 1e-4  # bf16: the products round to 8 bits, in different orders
    (b1, b2), lr, eps = opt.betas, opt.lr, opt.eps
    for k in range(5):
        xb = mnist.train_x[k * BATCH:(k + 1) * BATCH - (7 if k == 2 else 0)]  # the third, short: eager
        before = [p.detach().clone() for p in model.parameters()]
        want, got = eager(xb, gen_e), compiled(xb, gen_c)
        assert torch.equal(gen_e.get_state(), gen_c.get_state()), "the compiled step drew otherwise"
        assert relative_gap(want, got) < tol / 10
        for i, (theta, p) in enumerate(zip(before, model.parameters(), strict=True)):
            s, e = opt.state[i], eager_opt.state[i]
            assert torch.equal(s["step"], e["step"]) and int(s["step"]) == k + 1
            assert relative_gap(e["exp_avg"], s["exp_avg"]) < tol, (k, i)
            assert relative_gap(e["exp_avg_sq"], s["exp_avg_sq"]) < 2 * tol, (k, i)
            t = k + 1  # Kingma & Ba's update of the compiled step's own moments
            update = lr / (1 - b1**t) * s["exp_avg"] / (s["exp_avg_sq"].sqrt() / (1 - b2**t) ** 0.5 + eps)
            assert relative_gap(theta - update, p.detach()) < 1e-6, (k, i)
        copy_state(eager_model, eager_opt, model, opt)
    assert compiled.fallback is None and compiled.compile_seconds > 0
    assert lines[0].startswith("--compile: compiling the training step")
    assert lines[1:] == [f"--compile: the step compiled in {compiled.compile_seconds:.1f} s"]


def test_the_bias_corrections_are_the_same_computed_on_the_host_or_on_the_device() -> None:
    """Adam's corrections as the graph takes them: from Python's doubles on the CPU, from the step tensor in float64
    elsewhere (that path runs here on a CPU tensor); both equal, to the bit, at every 7th step up to 50,000."""
    lr, betas = 1e-3, (0.9, 0.999)
    counts = torch.arange(0, 50_000, 7, dtype=torch.float32)  # Adam's count before the step
    for count in counts:
        step = count.clone()
        want = steps.corrections_on_host(float(count) + 1, lr, betas)
        assert torch.equal(steps.corrections_on_device(step, lr, betas), want), float(count)
        assert torch.equal(steps.bias_corrections(step, lr, betas), want)
    t = 4689.0
    assert steps.corrections_on_host(t, lr, betas).tolist() == pytest.approx(
        [lr / (1 - 0.9**t), (1 - 0.999**t) ** 0.5], rel=1e-7)


def test_a_short_batch_runs_the_eager_step_to_the_bit(mnist: MNIST) -> None:
    """The last, shorter batch of an epoch: the eager step itself (no graph is compiled for one batch an epoch)."""
    variant, cfg = get_variant("sgvb_b"), TrainConfig(batch_size=BATCH, compile=True)
    (eager_model, eager_opt), (model, opt) = build(variant, cfg), build(variant, cfg)
    step = CompiledStep(variant, model, opt, cfg, lambda _: None)
    gen_e, gen_c = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    xb = mnist.train_x[:BATCH - 7]
    assert torch.equal(eager_step(variant, eager_model, eager_opt, cfg)(xb, gen_e), step(xb, gen_c))
    assert step.compiled is None and step.fallback is None  # nothing probed or compiled
    for p, q in zip(eager_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_compiled_run_resumed_compiled_matches_the_uninterrupted_one_to_the_bit(mnist: MNIST) -> None:
    """2 epochs straight against 1, then epoch 2 from that epoch's checkpoint, both compiled (each train() call
    compiles its own step): the same numbers to the bit, the last short batch (eager) included."""
    cfg = TrainConfig(epochs=2, batch_size=BATCH, limit_train=5 * BATCH + 9, compile=True)
    variant = get_variant("sgvb_b")
    whole = train(variant, cfg, mnist, log=lambda _: None)
    first = MemoryTracker()
    train(variant, dataclasses.replace(cfg, epochs=1), mnist, first, log=lambda _: None)
    assert first.checkpoint is not None
    resumed = train(variant, cfg, mnist, start=first.checkpoint, log=lambda _: None)
    assert resumed.history[-1]["train_loss"] == whole.history[-1]["train_loss"]
    assert resumed.history[-1]["test_loss"] == whole.history[-1]["test_loss"]
    # Each epoch says how much of it the graph trained: its 5 full batches, not the short one.
    assert [m["train_compiled_share"] for m in whole.history] == [5 * BATCH / (5 * BATCH + 9)] * 2
    assert resumed.history[-1]["train_compiled_share"] == 5 * BATCH / (5 * BATCH + 9)
    assert COMPILE_TAG not in first.tags
    for p, q in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def _draws_from_the_global_rng(model: Any, x: Tensor, samples: int, gen: torch.Generator | None) -> LossTerms:
    terms = sgvb_b(model, x, samples, gen)
    return dataclasses.replace(terms, recon=terms.recon + 0.0 * torch.rand(()))


def _breaks_the_graph(model: Any, x: Tensor, samples: int, gen: torch.Generator | None) -> LossTerms:
    terms = sgvb_b(model, x, samples, gen)
    if terms.kld.sum().item() > -1.0:  # a Python branch on a value: no single graph
        return terms
    return terms


class _OldStyleSquare(torch.autograd.Function):
    """An autograd.Function in the old form (ctx in forward), which torch.func cannot run."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 2 * x * g


def _old_style_function(model: Any, x: Tensor, samples: int, gen: torch.Generator | None) -> LossTerms:
    terms = sgvb_b(model, x, samples, gen)
    return dataclasses.replace(terms, kld=_OldStyleSquare.apply(terms.kld.sqrt()))


def _otherwise_under_torch_func(model: Any, x: Tensor, samples: int, gen: torch.Generator | None) -> LossTerms:
    terms = sgvb_b(model, x, samples, gen)
    if torch._C._are_functorch_transforms_active():  # as iwae_dreg branches, but to another gradient
        return dataclasses.replace(terms, kld=1.5 * terms.kld)
    return terms


@pytest.mark.parametrize(("estimator", "why"), [
    (_draws_from_the_global_rng, "it draws from torch's global RNG"),
    (_breaks_the_graph, "it does not compile as one graph"),
    (_old_style_function, "torch.func cannot differentiate it"),
    (_otherwise_under_torch_func, "the traced gradient of model.fc1.weight differs from autograd's")])
def test_a_variant_that_cannot_be_compiled_trains_eagerly_to_the_bit_with_one_line(
        estimator: Any, why: str, mnist: MNIST, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ESTIMATORS, estimator.__name__, estimator)  # as variants.plugins.register_estimator does
    monkeypatch.setattr(registry, "ESTIMATOR_NAMES", [*registry.ESTIMATOR_NAMES, estimator.__name__])
    variant = Variant("plugin_like", "a user's estimator", estimator.__name__)
    cfg = TrainConfig(epochs=1, batch_size=BATCH, limit_train=3 * BATCH + 5)
    torch.manual_seed(0)
    eager = train(variant, cfg, mnist, log=lambda _: None)
    lines: list[str] = []
    torch.manual_seed(0)
    tracker = MemoryTracker()
    compiled = train(variant, dataclasses.replace(cfg, compile=True), mnist, tracker, log=lines.append)
    notes = [line for line in lines if line.startswith("--compile")]
    assert len(notes) == 2 and notes[1].startswith(f"--compile: plugin_like trains eagerly: {why}"), notes
    # The run records it: no image went through a graph, and a tag says from when and why.
    assert compiled.history[0]["train_compiled_share"] == 0.0 and tracker.metrics[1]["train_compiled_share"] == 0.0
    assert tracker.tags == {COMPILE_TAG: f"epoch 1: {notes[1].split(': ', 2)[2]}"}
    assert compiled.history[0]["train_loss"] == eager.history[0]["train_loss"]
    for p, q in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        assert torch.equal(p, q)


SCHEDULE = {"beta": 0.0}  # a plugin's KL warm-up, kept in a global that its driver moves between steps


def _kl_warm_up(model: Any, x: Tensor, samples: int, gen: torch.Generator | None) -> LossTerms:
    terms = sgvb_b(model, x, samples, gen)
    return dataclasses.replace(terms, surrogate=terms.recon + SCHEDULE["beta"] * terms.kld)


def _under_a_schedule(estimator: Any, betas: list[float], mnist: MNIST,
                      monkeypatch: pytest.MonkeyPatch) -> tuple[CompiledStep, list[str]]:
    """A compiled and an eager step of ``estimator`` (registered as a plugin's is), step by step from the same
    weights with SCHEDULE["beta"] set to each of ``betas`` in turn: each step's gradient (read from Adam's moments)
    must be autograd's at the current beta. Returns the compiled step and its lines."""
    monkeypatch.setitem(ESTIMATORS, estimator.__name__, estimator)
    monkeypatch.setattr(registry, "ESTIMATOR_NAMES", [*registry.ESTIMATOR_NAMES, estimator.__name__])
    monkeypatch.setitem(SCHEDULE, "beta", 0.0)
    variant = Variant("scheduled", "a user's estimator", estimator.__name__)
    cfg = TrainConfig(batch_size=BATCH, compile=True)
    (eager_model, eager_opt), (model, opt) = build(variant, cfg), build(variant, cfg)
    lines: list[str] = []
    eager, compiled = eager_step(variant, eager_model, eager_opt, cfg), CompiledStep(variant, model, opt, cfg,
                                                                                   lines.append)
    gen_e, gen_c = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for k, beta in enumerate(betas):
        SCHEDULE["beta"] = beta
        xb = mnist.train_x[k * BATCH:(k + 1) * BATCH]
        eager(xb, gen_e), compiled(xb, gen_c)
        assert torch.equal(gen_e.get_state(), gen_c.get_state())
        for i in opt.state:
            assert relative_gap(eager_opt.state[i]["exp_avg"], opt.state[i]["exp_avg"]) < 1e-4, (k, i)
        copy_state(eager_model, eager_opt, model, opt)
    return compiled, lines


def test_a_variant_whose_python_state_moves_is_rebuilt_twice_then_trains_eagerly_with_one_line(
        mnist: MNIST, monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph bakes in the Python values it read; its guards catch a change: two rebuilds, then the eager step
    from the third change on, where dynamo would rebuild at every step and stop the run with a traceback at the
    ninth. Every step follows autograd at the current beta."""
    betas = [0.0, 0.0, 0.25, 0.5, *[i / 10 for i in range(6, 13)]]  # 9 changes
    compiled, lines = _under_a_schedule(_kl_warm_up, betas, mnist, monkeypatch)
    assert compiled.rebuilds == 3 and compiled.fallback is not None
    assert compiled.graph_images == 4 * BATCH  # the first step, one steady, two rebuilt; then eager
    held = "SCHEDULE['beta'] == {} no longer holds, test_compiled_step.py:"
    assert all(re.fullmatch(r"--compile: the step was rebuilt in \d+\.\d s \(.+\)", line) for line in lines[2:4])
    assert held.format(0.0) in lines[2] and held.format(0.25) in lines[3] and "in _kl_warm_up)" in lines[3]
    assert lines[4].startswith("--compile: scheduled trains eagerly from here: its step reads Python state that "
                               "changes between steps (" + held.format(0.5)), lines[4]
    assert len(lines) == 5


def _breaks_the_graph_when_told(model: Any, x: Tensor, samples: int, gen: torch.Generator | None) -> LossTerms:
    terms = sgvb_b(model, x, samples, gen)
    if SCHEDULE["beta"] > 0.5 and terms.kld.sum().item() > -1.0:  # from then on, a branch on a value
        return dataclasses.replace(terms, surrogate=terms.recon + SCHEDULE["beta"] * terms.kld)
    return terms


def test_a_rebuild_that_does_not_compile_trains_eagerly_from_that_step_with_one_line(
        mnist: MNIST, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new state takes a Python branch on a value: the rebuild fails, and that step and the rest run eagerly."""
    compiled, lines = _under_a_schedule(_breaks_the_graph_when_told, [0.0, 0.0, 0.75, 0.75], mnist, monkeypatch)
    assert compiled.rebuilds == 1 and len(lines) == 3, lines
    assert compiled.graph_images == 2 * BATCH  # the rebuild that failed ran eagerly
    assert lines[2].startswith("--compile: scheduled trains eagerly from here: it does not compile as one graph "
                               "after SCHEDULE['beta'] == 0.0 no longer holds, test_compiled_step.py:"), lines[2]


def test_run_compile_is_a_param_and_a_resume_the_other_way_says_it_will_not_match(
        tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.training.test_resume import SMALL, bench_run

    assert bench_run([*SMALL, "--epochs", "1", "--compile", "--tracking-uri", tracking_uri], capsys)[0] == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
    assert run.data.params["compile"] == "True"
    (share,) = client.get_metric_history(run.info.run_id, "train_compiled_share")
    assert share.step == 1 and share.value == 256 / 300  # --limit-train 300: two full batches of 128 compiled
    assert COMPILE_TAG not in run.data.tags
    rc = main_guard(run_main, PROG)(["--resume", run.info.run_id, "--epochs", "2", "--no-compile", "--no-progress",
                                     "--tracking-uri", tracking_uri])
    out = capsys.readouterr().out
    assert rc == 0
    assert "note: it trained compiled and resumes eagerly" in out and "give --compile to match it" in out
    assert "--compile: the step compiled" not in out  # the resume ran eagerly
    assert client.get_run(run.info.run_id).data.params["compile"] == "True"  # what it started with
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_compiled_share")] == [1]  # eager 2


def test_compile_is_not_part_of_what_a_grid_cell_or_a_study_compares() -> None:
    """A run trained compiled is the same cell of a grid, and the same study's trial, as one trained eagerly:
    how a run ran, not what it computed (like the device)."""
    from bench.grid import build_parser as grid_parser
    from bench.sweeps.cells import build_cells
    from bench.sweeps.tuning import study_settings

    cells = {tuple(c): build_cells(grid_parser().parse_args(["--variants", "sgvb_b", *c]), "cpu", "digest")
             for c in ([], ["--compile"])}
    assert cells[()][0].cfg.compile is False and cells[("--compile",)][0].cfg.compile is True
    assert cells[()][0].params == cells[("--compile",)][0].params and "compile" not in cells[()][0].params
    variant = get_variant("sgvb_b")
    assert (study_settings(variant, TrainConfig(compile=True), "d") == study_settings(variant, TrainConfig(), "d"))


def test_a_fixed_parameter_is_left_out_of_the_graphs_update(mnist: MNIST) -> None:
    """The Gaussian decoder's fixed variance (a parameter that takes no gradient) is not differentiated or updated;
    the learned one is. Probed only: nothing is compiled until the first call."""
    for name, learned in (("sgvb_b_gauss", False), ("sgvb_b_gauss_learned", True)):
        variant, cfg = get_variant(name), TrainConfig(batch_size=BATCH, compile=True)
        model, opt = build(variant, cfg)
        step = CompiledStep(variant, model, opt, cfg, lambda _: None)
        assert step._prepare(mnist.train_x[:BATCH]) is None
        assert ("model.likelihood.log_c" in step.names) is learned
        assert len(step.names) == len([p for p in model.parameters() if p.requires_grad]) == 8 + learned
