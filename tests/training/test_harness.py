"""The training harness with in-memory trackers (no MLflow): metrics, artifacts, determinism, resume, NaN."""

from __future__ import annotations

import io
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from bench.core.config import TrainConfig
from bench.core.data import MNIST
from bench.errors import NonFiniteLoss, UserError
from bench.tracking.tracker import MemoryTracker, NullTracker
from bench.training.loop import TrainResult, train
from variants.registry import Variant, get_variant

# The metric-name contract (README, "A run records"): logged at every epoch, step = epoch number from 1.
METRICS = {"train_loss", "train_recon", "train_kld", "test_loss", "test_recon", "test_kld", "test_mse",
           "epoch_seconds", "train_samples_per_second"}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {"latent": 2, "epochs": 2, "limit_train": 512, "device": "cpu", "seed": 1}
    return TrainConfig(**{**settings, **overrides})


def run(variant: Variant | str = "sgvb_b", tracker: MemoryTracker | None = None, lines: list[str] | None = None,
        data: MNIST | None = None, **overrides: Any) -> TrainResult:
    assert data is not None
    v = get_variant(variant) if isinstance(variant, str) else variant
    sink = lines if lines is not None else []
    return train(v, tiny(**overrides), data, tracker, log=sink.append)


def assert_finite_and_additive(history: list[dict[str, float]]) -> None:
    for m in history:
        assert all(math.isfinite(v) for v in m.values()), m
        assert m["train_loss"] == pytest.approx(m["train_recon"] + m["train_kld"], rel=1e-6, abs=1e-4)
        assert m["test_loss"] == pytest.approx(m["test_recon"] + m["test_kld"], rel=1e-6, abs=1e-4)
        assert m["epoch_seconds"] > 0 and m["train_samples_per_second"] > 0
        assert m["test_kld"] >= 0 and 0 <= m["test_mse"] <= 1  # analytic KL; train_kld of A or IWAE is sampled


@pytest.fixture(scope="module")
def tiny_run(mnist: MNIST) -> tuple[TrainResult, MemoryTracker, list[str]]:
    tracker, lines = MemoryTracker(), []
    result = run(tracker=tracker, lines=lines, data=mnist)
    return result, tracker, lines


def test_tiny_run_metrics_are_finite_and_loss_is_recon_plus_kld(tiny_run: Any) -> None:
    result, tracker, _ = tiny_run
    assert len(result.history) == 2
    assert_finite_and_additive(result.history)
    first, last = result.history
    assert last["train_loss"] < first["train_loss"] and last["test_loss"] < first["test_loss"]  # it learns
    assert 100 < last["test_loss"] < 550  # nats per image: the scale of MNIST's -ELBO


def test_tiny_run_logs_exactly_the_design_metric_names_per_epoch(tiny_run: Any) -> None:
    result, tracker, _ = tiny_run
    assert sorted(tracker.metrics) == [1, 2]
    for epoch, metrics in tracker.metrics.items():
        assert set(metrics) == METRICS
        assert metrics == result.history[epoch - 1]


def test_tiny_run_logs_the_image_grids_per_epoch(tiny_run: Any) -> None:
    _, tracker, _ = tiny_run
    assert sorted(tracker.artifacts) == sorted(
        f"images/{kind}_{e:03d}.png" for kind in ("reconstruction", "samples") for e in (1, 2))


def test_tiny_run_checkpoint_is_the_last_epoch(tiny_run: Any) -> None:
    result, tracker, _ = tiny_run
    ck = tracker.checkpoint
    assert ck is not None and ck["epoch"] == 2
    assert {"model", "optimizer", "torch_rng"} <= set(ck)
    for k, v in result.model.state_dict().items():
        assert torch.equal(ck["model"][k], v), k
    assert ck["optimizer"]["state"]  # Adam's moments are saved too


def test_tiny_run_prints_the_seeds_epoch_summary(tiny_run: Any) -> None:
    result, _, lines = tiny_run
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        m = re.match(r"====> Epoch: (\d+) Average loss: (\d+\.\d{4})", line)
        assert m, line
        assert int(m.group(1)) == epoch
        assert float(m.group(2)) == pytest.approx(result.history[epoch - 1]["train_loss"], abs=1e-4)


def test_model_exposes_encode_and_decode(tiny_run: Any, mnist: MNIST) -> None:
    model = tiny_run[0].model
    mu, logvar = model.encode(mnist.test_x[:4])
    assert mu.shape == logvar.shape == (4, 2)
    assert model.decode(mu).shape == (4, 784)


def deterministic(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items() if k not in ("epoch_seconds", "train_samples_per_second")}


def test_same_seed_gives_identical_numbers(tiny_run: Any, mnist: MNIST) -> None:
    again = run(data=mnist)
    assert [deterministic(m) for m in again.history] == [deterministic(m) for m in tiny_run[0].history]
    for (k, a), b in zip(again.model.state_dict().items(), tiny_run[0].model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_different_seed_gives_different_numbers(tiny_run: Any, mnist: MNIST) -> None:
    other = run(data=mnist, seed=2)
    for a, b in zip(other.history, tiny_run[0].history, strict=True):
        assert a["train_loss"] != b["train_loss"] and a["test_loss"] != b["test_loss"]


def test_resume_from_checkpoint_equals_uninterrupted_run(mnist: MNIST) -> None:
    """3 epochs straight vs 1 epoch, then epochs 2-3 from that epoch's checkpoint: the same numbers."""
    straight = run(data=mnist, epochs=3)
    first = MemoryTracker()
    run(data=mnist, epochs=1, tracker=first)
    assert first.checkpoint is not None and first.checkpoint["epoch"] == 1
    buffer = io.BytesIO()  # the way bench.tracking stores it: torch.save, then a weights-only load
    torch.save(first.checkpoint, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    rest = MemoryTracker()
    resumed = train(get_variant("sgvb_b"), tiny(epochs=3), mnist, rest, start=checkpoint, log=lambda s: None)
    assert sorted(rest.metrics) == [2, 3]  # only the epochs it trained
    assert len(resumed.history) == 2
    for a, b in zip(resumed.history, straight.history[1:], strict=True):
        for name in ("train_loss", "train_recon", "train_kld", "test_loss", "test_recon", "test_kld", "test_mse"):
            assert a[name] == pytest.approx(b[name], abs=1e-3), name


def test_resume_after_the_last_epoch_trains_nothing(mnist: MNIST) -> None:
    tracker = MemoryTracker()
    run(data=mnist, epochs=1, tracker=tracker)
    again = MemoryTracker()
    result = train(get_variant("sgvb_b"), tiny(epochs=1), mnist, again, start=tracker.checkpoint,
                   log=lambda s: None)
    assert result.history == [] and again.metrics == {}


def test_zero_epochs_trains_nothing(mnist: MNIST) -> None:
    result = run(data=mnist, epochs=0, tracker=MemoryTracker())
    assert result.history == []


def test_huge_learning_rate_raises_non_finite_loss(mnist: MNIST) -> None:
    with pytest.raises(NonFiniteLoss, match="epoch 1"):
        run(data=mnist, lr=1e6, epochs=2)


def test_nan_in_the_data_raises_non_finite_loss(mnist: MNIST) -> None:
    train_x = mnist.train_x[:256].clone()
    train_x[100, 300] = float("nan")
    poisoned = MNIST(train_x, mnist.train_y[:256], mnist.test_x, mnist.test_y, "poisoned", "nan")
    with pytest.raises(NonFiniteLoss, match="nan"):
        run(data=poisoned, epochs=1, limit_train=None, tracker=NullTracker())


def test_nan_is_caught_before_the_end_of_a_long_epoch(mnist: MNIST) -> None:
    """A NaN early in an epoch stops training within the periodic check, not after the whole epoch."""
    tracker = MemoryTracker()
    with pytest.raises(NonFiniteLoss, match="batch"):
        run(data=mnist, lr=1e6, epochs=1, limit_train=60000, batch_size=16, tracker=tracker)
    assert tracker.metrics == {} and tracker.checkpoint is None  # nothing of the failed epoch was logged


# The other axes of the benchmark grid: estimator x samples x decoder, latent sizes spread over them.
AXES = [(est, L, dec) for est in ("sgvb_a", "sgvb_b") for L in (1, 3, 5) for dec in ("bernoulli", "gaussian")]


@pytest.mark.parametrize("i, axes", list(enumerate(AXES)), ids=[f"{e}-L{s}-{d}" for e, s, d in AXES])
def test_other_axes_finish_with_finite_metrics(i: int, axes: tuple[str, int, str], mnist: MNIST) -> None:
    estimator, samples, decoder = axes
    latent = (2, 10, 20)[i % 3]
    variant = get_variant(estimator).replace(samples=samples, decoder=decoder)
    tracker = MemoryTracker()
    result = run(variant, data=mnist, tracker=tracker, epochs=1, limit_train=256, latent=latent)
    assert_finite_and_additive(result.history)
    assert set(tracker.metrics[1]) == METRICS
    assert result.model.latent == latent


@pytest.mark.parametrize("name", ["score_function", "iwae_k5", "sgvb_b_gauss_learned"])
def test_other_estimators_finish_with_finite_metrics(name: str, mnist: MNIST) -> None:
    result = run(name, data=mnist, epochs=1, limit_train=256)
    assert_finite_and_additive(result.history)


@pytest.mark.parametrize("overrides", [{"binarize": "static"}, {"binarize": "dynamic"}, {"precision": "bf16"}],
                         ids=["static", "dynamic", "bf16"])
def test_harness_settings_finish_with_finite_metrics(overrides: dict[str, str], mnist: MNIST) -> None:
    result = run(data=mnist, epochs=1, limit_train=256, **overrides)
    assert_finite_and_additive(result.history)


@pytest.mark.parametrize("overrides, message", [
    ({"latent": 0}, "latent"), ({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch size"),
    ({"lr": 0.0}, "learning rate"), ({"lr": float("nan")}, "learning rate"), ({"precision": "fp8"}, "precision"),
    ({"binarize": "maybe"}, "binarize"), ({"limit_train": 0}, "limit-train"),
])
def test_bad_settings_are_user_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        tiny(**overrides)


@dataclass(frozen=True)
class Slow(Variant):
    """sgvb_b at 0.15 s per minibatch: a few seconds of work in fewer batches than the loop's NaN-check period."""

    def estimate(self, model, x, gen=None):  # noqa: ANN001, ANN201 - Variant's signature
        time.sleep(0.15)
        return super().estimate(model, x, gen)


def test_the_epoch_bar_moves_during_an_epoch_of_few_batches(mnist: MNIST, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 10: with --limit-train 5000 the bar stayed at 0/5000 all epoch (it moved every 50 batches)."""
    cfg = tiny(epochs=1, batch_size=16, limit_train=320)  # 20 batches, 3 s
    train(Slow("slow", "", hidden=16), cfg, mnist, progress=True, log=lambda _: None)
    shown = [int(n) for n in re.findall(r"(\d+)/320", capsys.readouterr().err)]
    assert any(0 < n < 320 for n in shown), shown
