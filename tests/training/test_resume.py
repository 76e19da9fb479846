"""--resume when something is off, on a real SQLite store: a run whose checkpoint is gone or unreadable, a target
below what is trained, bad data at resume time, and a tracking store that fails in the middle of a run."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
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
from bench.tracking.names import CHECKPOINT, EPOCHS_TAG, FAILURE_TAG
from bench.training.lifecycle import execute
from variants import get_variant

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


def test_resume_refuses_flags_that_would_change_the_run(tracking_uri: str, killed_run: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = bench_run(["--resume", killed_run, "--lr", "0.1", "--variant", "sgvb_b", "--tracking-uri",
                         tracking_uri], capsys)
    assert rc == 2 and "drop --variant, --lr" in err
    assert MlflowClient(tracking_uri).get_run(killed_run).info.status == "KILLED"


def test_a_resumed_run_sheds_its_old_failure_and_records_its_new_target(tracking_uri: str, killed_run: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(tracking_uri)
    client.set_tag(killed_run, FAILURE_TAG, "interrupted (SIGINT)")
    rc, _ = bench_run(["--resume", killed_run, "--epochs", "3", "--tracking-uri", tracking_uri], capsys)
    run = client.get_run(killed_run)
    assert rc == 0 and run.info.status == "FINISHED"
    assert FAILURE_TAG not in run.data.tags and run.data.tags[EPOCHS_TAG] == "3"
    assert [m.step for m in client.get_metric_history(killed_run, "train_loss")] == [1, 2, 3]
