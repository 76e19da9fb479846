"""--resume when something is off, on a real SQLite store: a run whose checkpoint is gone or unreadable, a target
below what is trained, bad data at resume time, and a tracking store that fails in the middle of a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from bench.cli import main_guard
from bench.core.config import TrainConfig
from bench.core.data import load_mnist
from bench.errors import UserError
from bench.run import PROG
from bench.run import main as run_main
from bench.tracking.artifacts import local_artifacts
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import CHECKPOINT, EPOCHS_TAG, FAILURE_TAG, MODEL_EPOCH_TAG
from bench.training.lifecycle import execute
from tests.conftest import CODE
from variants import get_variant
from variants.registry import Variant

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--variant", "sgvb_b", "--latent", "2", "--limit-train", "300", "--device", "cpu", "--no-progress"]


def bench_run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """python -m bench.run ``args`` in this process: its exit status and its last line on stderr."""
    rc = main_guard(run_main, PROG)(args)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


@pytest.fixture
def killed_run(tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> str:
    """A run that trained 2 epochs, then marked KILLED as if stopped during its final evaluation."""
    assert bench_run([*SMALL, "--epochs", "2", "--tracking-uri", tracking_uri], capsys)[0] == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
    client.set_terminated(run.info.run_id, "KILLED")
    return run.info.run_id


def checkpoint_file(client: MlflowClient, run_id: str) -> Path:
    root = client.get_run(run_id).info.artifact_uri
    local = local_artifacts(root, client.tracking_uri)  # a store-relative mlflow-artifacts:/ URI
    return (local or Path(unquote(urlparse(root).path))) / CHECKPOINT


def test_a_target_below_the_trained_epochs_is_refused(tracking_uri: str, killed_run: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = bench_run(["--resume", killed_run, "--epochs", "1", "--tracking-uri", tracking_uri], capsys)
    assert rc == 2 and err.endswith(f"run {killed_run} has already trained 2 epochs; give --epochs 2 or more")
    assert MlflowClient(tracking_uri).get_run(killed_run).info.status == "KILLED"


def test_a_run_with_epochs_but_no_checkpoint_is_not_restarted(tracking_uri: str, killed_run: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(tracking_uri)
    checkpoint_file(client, killed_run).unlink()
    rc, err = bench_run(["--resume", killed_run, "--epochs", "3", "--tracking-uri", tracking_uri], capsys)
    assert rc == 2 and "has 2 epochs logged but no checkpoint to resume from" in err
    assert len(client.get_metric_history(killed_run, "train_loss")) == 2  # nothing logged again
    assert client.get_run(killed_run).info.status == "KILLED"


def test_an_unreadable_checkpoint_is_a_one_line_error(tracking_uri: str, killed_run: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = checkpoint_file(MlflowClient(tracking_uri), killed_run)
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk
    rc, err = bench_run(["--resume", killed_run, "--epochs", "3", "--tracking-uri", tracking_uri], capsys)
    assert rc == 2 and f"the checkpoint of run {killed_run} cannot be read" in err


def test_bad_data_at_resume_leaves_the_run_as_it_was(tracking_uri: str, killed_run: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = bench_run(["--resume", killed_run, "--epochs", "3", "--tracking-uri", tracking_uri,
                         "--data-dir", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "nowhere" in err
    assert MlflowClient(tracking_uri).get_run(killed_run).info.status == "KILLED"  # not left RUNNING


class StoreGivesWay(MlflowTracker):
    """A real MLflow run whose store stops answering metric writes after the first epoch."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step >= 2:
            raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed (503)")
        super().log_metrics(metrics, step)


def test_a_store_failure_mid_run_is_one_line_and_leaves_the_run_resumable(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    tracker = StoreGivesWay(client, MlflowTracker.start(client, "vae-bench", "sgvb_b-z2-L1-s1", {}).run_id)
    cfg = TrainConfig(latent=2, epochs=3, limit_train=300)
    with pytest.raises(UserError, match=f"resume it with --resume {tracker.run_id}") as caught:
        execute(tracker, get_variant("sgvb_b"), cfg, load_mnist(), None, progress=False)
    assert "503" in str(caught.value) and "\n" not in str(caught.value)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and "MlflowException" in run.data.tags[FAILURE_TAG]
    assert MlflowTracker(client, tracker.run_id).load_checkpoint()["epoch"] == 2  # what resume starts from


def test_limit_train_beyond_the_data_is_refused_before_a_run_is_made(tracking_uri: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = bench_run([*SMALL, "--limit-train", "60001", "--tracking-uri", tracking_uri], capsys)
    assert rc == 2 and err.endswith("limit-train 60001 is more than the 60000 training images; give at most 60000")
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_resume_refuses_only_the_flags_that_differ_naming_both_values(tracking_uri: str, killed_run: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = bench_run(["--resume", killed_run, "--lr", "0.1", "--variant", "sgvb_b", "--latent", "3",
                         "--seed", "1", "--tracking-uri", tracking_uri], capsys)
    assert rc == 2
    assert "--latent 3 (the run's: 2), --lr 0.1 (the run's: 0.001) differ; drop them" in err
    assert "--variant" not in err and "--seed" not in err  # the run's own values
    assert MlflowClient(tracking_uri).get_run(killed_run).info.status == "KILLED"


def test_resume_accepts_the_command_line_that_made_the_run(tracking_uri: str, killed_run: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 10: the same command line with --resume added is not refused (1e-3 and 0.001 are one value)."""
    rc, _ = bench_run([*SMALL, "--epochs", "3", "--lr", "1e-3", "--experiment", "vae-bench", "--resume", killed_run,
                       "--tracking-uri", tracking_uri], capsys)
    assert rc == 0
    client = MlflowClient(tracking_uri)
    assert client.get_run(killed_run).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(killed_run, "train_loss")] == [1, 2, 3]


def test_a_resumed_run_sheds_its_old_failure_and_records_its_new_target(tracking_uri: str, killed_run: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(tracking_uri)
    client.set_tag(killed_run, FAILURE_TAG, "interrupted (SIGINT)")
    rc, _ = bench_run(["--resume", killed_run, "--epochs", "3", "--tracking-uri", tracking_uri], capsys)
    run = client.get_run(killed_run)
    assert rc == 0 and run.info.status == "FINISHED"
    assert FAILURE_TAG not in run.data.tags and run.data.tags[EPOCHS_TAG] == "3"
    assert [m.step for m in client.get_metric_history(killed_run, "train_loss")] == [1, 2, 3]


def test_the_global_torch_rng_is_restored_on_resume(mnist) -> None:
    """torch_rng is saved with every checkpoint and restored by a resume: a variant drawing from torch's global
    RNG goes on where it stopped. (The harness's own streams need no saved state.)"""
    from bench.tracking.tracker import MemoryTracker
    from bench.training.loop import train

    cfg = TrainConfig(latent=2, epochs=1, limit_train=200, device="cpu")
    first = MemoryTracker()
    train(get_variant("sgvb_b"), cfg, mnist, first)
    torch.manual_seed(12345)
    marked = torch.get_rng_state()  # a state the run could not reach by itself
    start = {**first.checkpoint, "torch_rng": marked}
    second = MemoryTracker()
    train(get_variant("sgvb_b"), TrainConfig(latent=2, epochs=2, limit_train=200, device="cpu"), mnist, second,
          start=start)
    assert torch.equal(second.checkpoint["torch_rng"], marked)


# A real process that trains with a tracker killing it (SIGKILL, no handler runs) right after epoch 2's checkpoint.
KILLED_AFTER_CHECKPOINT = """
import os, signal, sys
from mlflow import MlflowClient
from bench.core.config import TrainConfig
from bench.core.data import load_mnist
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.training.identity import run_params
from bench.training.lifecycle import execute
from variants import get_variant


class DiesAfterCheckpoint(MlflowTracker):
    def log_metrics(self, metrics, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        super().log_metrics(metrics, step)


client = MlflowClient(sys.argv[1])
variant, cfg, data = get_variant("sgvb_b"), TrainConfig(latent=2, epochs=3, limit_train=300), load_mnist()
run = MlflowTracker.start(client, "vae-bench", "sgvb_b-z2-L1-s1", run_params(variant, cfg, data.digest))
print(run.run_id, flush=True)
execute(DiesAfterCheckpoint(client, run.run_id), variant, cfg, data, None, progress=False)
"""


def test_a_sigkill_between_checkpoint_and_metrics_loses_nothing(tracking_uri: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13 item 8: the epoch's epoch_seconds travels with the checkpoint; the dead owner's claim is no bar."""
    env = {**os.environ, **CODE, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_CHECKPOINT, tracking_uri], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_id = proc.stdout.split()[0]
    client = MlflowClient(tracking_uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing could record its end
    assert [m.step for m in client.get_metric_history(run_id, "epoch_seconds")] == [1]
    rc, err = bench_run(["--resume", run_id, "--tracking-uri", tracking_uri, "--no-progress"], capsys)
    assert rc == 0, err
    for name in ("epoch_seconds", "train_loss", "test_loss"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2, 3], name
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_run_holds_one_model_after_any_number_of_resumes(tracking_uri: str, killed_run: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(tracking_uri)
    # The last one as after a kill during the final evaluation: nothing left to train, the evaluation is redone.
    for epochs in (3, 4, 4):
        client.set_terminated(killed_run, "KILLED")
        rc, err = bench_run(["--resume", killed_run, "--epochs", str(epochs), "--tracking-uri", tracking_uri], capsys)
        assert rc == 0, err
    models = MlflowTracker(client, killed_run).logged_models()
    assert len(models) == 1 and models[0].tags[MODEL_EPOCH_TAG] == "4"
    assert [m.step for m in client.get_metric_history(killed_run, "active_units")] == [2, 3, 4]  # none twice


@dataclass(frozen=True)
class Huge(Variant):
    """sgvb_b whose training asks torch's CPU allocator for a petabyte: a real allocation failure."""

    def estimate(self, model, x, gen=None):  # noqa: ANN001, ANN201 - Variant's signature
        torch.empty(2**50, dtype=torch.uint8)
        return super().estimate(model, x, gen)


def test_out_of_memory_is_one_line_and_ends_the_run_failed(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    tracker = MlflowTracker.start(client, "vae-bench", "huge", {})
    with pytest.raises(UserError, match=f"ran out of memory .*resume it with --resume {tracker.run_id}") as caught:
        execute(tracker, Huge("huge", "", hidden=16), TrainConfig(latent=2, epochs=1, limit_train=300), load_mnist(),
                None, progress=False)
    assert "\n" not in str(caught.value)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG].startswith("out of memory")


def test_a_resume_does_the_final_evaluation_the_run_was_started_with(tracking_uri: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Found by scripts/fault_injection.py: a resume without --nll-samples ended the run without its test NLL."""
    assert bench_run([*SMALL, "--epochs", "1", "--nll-samples", "5", "--tracking-uri", tracking_uri], capsys)[0] == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
    client.set_terminated(run.info.run_id, "KILLED")
    assert bench_run(["--resume", run.info.run_id, "--epochs", "2", "--tracking-uri", tracking_uri], capsys)[0] == 0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_nll")] == [1, 2]
