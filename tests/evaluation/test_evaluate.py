"""bench.evaluate end to end on real runs in real SQLite stores, and the binarisation protocol it relies on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from torch import Tensor

from bench.cli import main_guard
from bench.core.config import TrainConfig
from bench.core.splits import BINARIZE_SEED, binarize, prepare_data
from bench.evaluate import PROG
from bench.evaluate import main as evaluate_main
from bench.evaluation.nll import estimate_nll
from bench.evaluation.run_evaluation import final_evaluation, load_run_model
from bench.tracking.analyses import find_analysis_run
from bench.tracking.tracker import MemoryTracker
from bench.training.loop import train
from tests.conftest import train_one
from variants.model import VAE
from variants.registry import Variant

PICTURES = {"evaluation/latent_scatter.png", "evaluation/latent_manifold.png"}
KL_FILES = {"evaluation/kl_per_dim.csv", "evaluation/kl_per_dim.md", "evaluation/kl_per_dim.png"}


def _artifacts(client: MlflowClient, run_id: str, folder: str = "evaluation") -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, folder)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One real bench.run run: sgvb_b, latent 2, 1 epoch on 500 images, dynamic binarisation, test NLL K=5."""
    return train_one(tmp_path_factory.mktemp("evaluate"), "--variant", "sgvb_b", "--latent", "2", "--epochs", "1",
                     "--limit-train", "500", "--binarize", "dynamic", "--nll-samples", "5")


def test_bench_run_evaluates_at_the_end_of_training(trained: tuple[str, str], tmp_path: Path) -> None:
    uri, run_id = trained
    client = MlflowClient(uri)
    m = client.get_run(run_id).data.metrics
    run = client.get_run(run_id)
    assert "nll_samples" not in m  # a setting: the param (the first K) and the tag of its step, never a chart
    assert run.data.params["nll_samples"] == "5" and run.data.tags["bench.nll_samples.step1"] == "5"
    assert math.isfinite(m["test_nll"]) and m["test_nll_stderr"] > 0
    assert m["test_nll"] < m["test_loss"] + 0.5  # the K-sample bound is tighter than the ELBO (same test set)
    assert m["active_units"] in (0.0, 1.0, 2.0)
    assert _artifacts(client, run_id) >= KL_FILES | PICTURES
    table = pd.read_csv(client.download_artifacts(run_id, "evaluation/kl_per_dim.csv", str(tmp_path)))
    assert list(table.columns) == ["dim", "kl", "mean_variance", "active"] and len(table) == 2
    assert table["kl"].sum() == pytest.approx(m["test_kld"], abs=1e-3)  # the KL term, split by dimension
    assert table["active"].sum() == m["active_units"]


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_cli_logs_into_the_run_and_leaves_its_status(trained: tuple[str, str], status: str,
                                                     mnist, capsys: pytest.CaptureFixture[str]) -> None:
    uri, run_id = trained
    client = MlflowClient(uri)
    client.set_terminated(run_id, status)
    gradvar = status == "FINISHED"  # the gradient-variance part once is enough
    argv = ["--run-id", run_id, "--tracking-uri", uri, "--nll-samples", "20",
            "--device", "cpu", "--no-progress"] + (["--gradient-variance", "--repeats", "3"] if gradvar else [])
    assert evaluate_main(argv) == 0
    run = client.get_run(run_id)
    assert run.info.status == status
    m = run.data.metrics
    assert "nll_samples" not in m and "gradvar_repeats" not in m
    assert run.data.params["nll_samples"] == "5"  # the param is the K of the run's first test_nll (bench.run's)
    ks = run.data.tags["bench.nll_samples.step1"].split(",")  # every K at this step, in the order of test_nll's values
    history = client.get_metric_history(run_id, "test_nll")
    assert ks[0] == "5" and ks[-1] == "20" and len(ks) == len(history)
    assert m["active_units"] == int(m["active_units"]) and 0 <= m["active_units"] <= 2
    if gradvar:  # the numbers do not depend on the status: checked once
        # The test set is binarised as in training (the run's binarize param is dynamic): recompute independently.
        model = load_run_model(client, run_id)
        test_x = binarize(mnist.test_x, BINARIZE_SEED + 1)
        assert m["test_nll"] == pytest.approx(estimate_nll(model, test_x, 20).nll, abs=1e-4)
        # (Grey levels give the same value in expectation under a Bernoulli decoder, but not the same numbers.)
        assert m["test_nll"] != pytest.approx(estimate_nll(model, mnist.test_x, 20).nll, abs=1e-3)
    files = _artifacts(client, run_id)
    assert files >= KL_FILES | PICTURES
    # The training run holds no slash-named section, so its Model metrics tab opens on its loss curves (issue 19).
    assert not any("/" in k for k in m)
    out = capsys.readouterr().out
    assert "its model of epoch 1" in out and "results at step 1" in out
    assert f"run {run_id} evaluated; browse it" in out and f"/runs/{run_id}?" in out  # the run's link
    if not gradvar:
        return
    gv_id = find_analysis_run(client, run_id, "gradient variance")
    gv = client.get_run(gv_id)  # the analysis run, nested under the training run, ended on its own
    assert gv.info.status == "FINISHED" and gv.data.tags["mlflow.parentRunId"] == run_id
    assert gv.info.run_name == f"{run.info.run_name} · gradient variance"
    assert gv.data.params["variant"] == run.data.params["variant"]  # the parent's params, for filtering
    gm = gv.data.metrics
    assert {"evaluation/gradvar.csv", "evaluation/gradvar.md"} <= _artifacts(client, gv_id)
    assert not {"evaluation/gradvar.csv", "evaluation/gradvar.md"} & files
    for est in ("sgvb_a", "sgvb_b", "score_function", "iwae", "iwae_dreg", "sgvb_a_L16", "sgvb_b_L4", "iwae_L4"):
        assert gm[f"gradvar/encoder/{est}"] > 0 and gm[f"gradvar/decoder/{est}"] > 0
        assert f"gradsnr/encoder/{est}" in gm
    assert gm["gradvar/encoder/score_function"] > gm["gradvar/encoder/sgvb_b"]
    assert gm["gradvar_ratio/encoder/score_function"] > 1
    params = gv.data.params  # settings are params, never metrics (GRADVAR_CONTRACT.md), beside their metrics
    assert (params["gradvar_repeats"], params["gradvar_batch_size"]) == ("3", "128")
    assert gv.data.tags["bench.gradvar_repeats.step1"] == "3"  # which R each step used
    assert "gradvar_repeats" not in run.data.params and "bench.gradvar_repeats.step1" not in run.data.tags
    assert not any(k.startswith("gradvar_repeats") for k in gm)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert any("score_function" in line for line in table)  # the printed table, 100 columns wide at most
    assert table and max(len(line) for line in table) <= 100
    assert f"its gradient variance: run {gv_id}" in out
    # Every long step says so when it starts and when it ends (issue 10); the model's epoch is named.
    assert "gradient variance of every estimator, 3 noise draws each: done in" in out


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_limit_test_is_a_check_that_logs_nothing(trained: tuple[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A subset's test_nll would sit under the full test set's name in the run and in reports: it is printed only."""
    uri, run_id = trained
    client = MlflowClient(uri)
    before = client.get_run(run_id).data.metrics
    argv = ["--run-id", run_id, "--tracking-uri", uri, "--nll-samples", "7", "--limit-test", "200", "--device", "cpu",
            "--no-progress"]
    assert evaluate_main(argv) == 0
    out = capsys.readouterr().out
    assert "a check on 200 of 10000 test images, printed and not logged" in out and "test NLL" in out
    assert client.get_run(run_id).data.metrics == before


def test_cli_refuses_an_unknown_run_id(tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    argv = ["--run-id", "0123456789abcdef0123456789abcdef", "--tracking-uri", tracking_uri]
    assert main_guard(evaluate_main, PROG)(argv) == 2
    assert "no run with id" in _one_line_error(capsys.readouterr().err)


def test_cli_refuses_a_run_without_a_model(tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("bare")).info.run_id
    client.set_terminated(run_id, "KILLED")
    capsys.readouterr()
    assert main_guard(evaluate_main, PROG)(["--run-id", run_id, "--tracking-uri", tracking_uri]) == 2
    assert "has no logged model" in _one_line_error(capsys.readouterr().err)
    assert client.get_run(run_id).info.status == "KILLED"


def test_final_evaluation_without_nll_is_cheap_and_skips_2d_pictures(mnist) -> None:
    torch.manual_seed(0)
    model = VAE(latent=3, hidden=32).eval()
    tracker = MemoryTracker()
    metrics = final_evaluation(model, None, TrainConfig(latent=3, epochs=4), mnist, tracker, nll_samples=0)
    assert set(metrics) == {"active_units"} and tracker.metrics[4] == metrics
    assert set(tracker.artifacts) == KL_FILES
    held_out = TrainConfig(latent=3, epochs=4, validation=1000)  # a tuning run never looks at the test set
    assert final_evaluation(model, None, held_out, mnist, MemoryTracker(), nll_samples=10) == {}


# Binarisation protocol (bench.core.splits, bench.training.loop): what the estimators see, minibatch by minibatch.

@dataclass(frozen=True)
class Recording(Variant):
    """sgvb_b that keeps a copy of every minibatch it is given."""

    seen: list[Tensor] = field(default_factory=list, compare=False)

    def estimate(self, model, x, gen=None):  # noqa: ANN001, ANN201 - Variant's signature
        self.seen.append(x.detach().clone())
        return super().estimate(model, x, gen)


def _rows(batches: list[Tensor]) -> list[bytes]:
    return sorted(r.numpy().tobytes() for b in batches for r in b)


def _minibatches(mnist, mode: str) -> tuple[list[Tensor], list[Tensor]]:
    """Epoch 1's and epoch 2's minibatches of 128 training images in batches of 64."""
    variant = Recording("recording", "", hidden=16)
    train(variant, TrainConfig(latent=2, epochs=2, batch_size=64, limit_train=128, binarize=mode), mnist,
          log=lambda _: None)
    assert len(variant.seen) == 4
    return variant.seen[:2], variant.seen[2:]


def test_dynamic_binarisation_draws_again_for_every_minibatch(mnist) -> None:
    first, second = _minibatches(mnist, "dynamic")
    grey = mnist.train_x[:128]
    for b in first + second:
        assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert len(set(_rows(first)) & set(_rows(second))) == 0  # every image drawn afresh the second time
    assert abs(float(torch.cat(first).mean() - grey.mean())) < 0.01  # E[draw] = grey level
    ones, zeros = torch.cat(first + second) == 1, torch.cat(first + second) == 0
    assert ones.any() and zeros.any()


def test_static_binarisation_is_one_draw_and_none_is_the_grey_levels(mnist) -> None:
    first, second = _minibatches(mnist, "static")
    assert _rows(first) == _rows(second)  # the same 128 binary images, reshuffled
    assert set(torch.cat(first).unique().tolist()) == {0.0, 1.0}
    first, second = _minibatches(mnist, "none")
    assert _rows(first) == _rows(second) == _rows([mnist.train_x[:128]])


def test_the_test_set_is_binarised_once_with_a_fixed_seed(mnist) -> None:
    cpu = torch.device("cpu")
    tests = [prepare_data(mnist, TrainConfig(binarize=mode, limit_train=10, seed=seed), cpu)[1]
             for mode in ("static", "dynamic") for seed in (1, 2)]
    assert all(torch.equal(tests[0], t) for t in tests[1:])  # the same for every run and every mode
    assert set(tests[0].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(prepare_data(mnist, TrainConfig(binarize="none", limit_train=10), cpu)[1], mnist.test_x)


def test_pictures_of_a_2d_latent(tmp_path: Path, mnist) -> None:
    from bench.evaluation.latents import encoder_moments, manifold_grid, save_latent_scatter, save_manifold

    grid = manifold_grid(20)
    assert grid.shape == (400, 2)
    assert float(grid[0, 0]) == pytest.approx(-1.95996, abs=1e-4)  # Phi^-1(0.025): left column
    assert float(grid[0, 1]) == pytest.approx(1.95996, abs=1e-4)  # top row is the largest z_2
    torch.manual_seed(0)
    model = VAE(latent=2, hidden=16).eval()
    mu, _ = encoder_moments(model, mnist.test_x[:500])
    from PIL import Image

    with Image.open(save_manifold(model, tmp_path / "m.png")) as im:
        assert im.size == (20 * 29 + 1, 20 * 29 + 1)  # 20 x 20 digits of 28 px with 1 px padding
    assert save_latent_scatter(mu, mnist.test_y[:500], tmp_path / "s.png").stat().st_size > 1000
