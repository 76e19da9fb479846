"""The MLflow side, against real SQLite stores in temporary folders: a bench.run's layout, and the tracker.

The main fixture runs ``python -m bench.run`` once, as a user would, from a working directory that is not
the store's folder, with the store given by MLFLOW_TRACKING_URI only; the tests then read the store back.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from bench.core.data import MNIST
from bench.errors import UserError
from bench.tracking.artifacts import ARTIFACTS_DIR, local_artifacts
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import (
    CHECKPOINT,
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    EXPERIMENT_NOTES,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    NOTE_TAG,
    OTHER_EXPERIMENT_NOTE,
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    USER_TAG,
)
from bench.tracking.store import open_store, resolve_tracking_uri
from tests.conftest import REPO

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
EPOCHS = 2
PER_EPOCH = ["train_loss", "train_recon", "train_kld", "test_loss", "test_recon", "test_kld", "test_mse",
             "epoch_seconds", "train_samples_per_second"]
PARAMS = {"variant": "sgvb_b", "estimator": "sgvb_b", "samples": "1", "decoder": "bernoulli", "hidden": "400",
          "latent": "2", "epochs": str(EPOCHS), "batch_size": "128", "lr": "0.001", "seed": "1", "device": "cpu",
          "precision": "fp32", "binarize": "none", "limit_train": "500"}


@dataclass
class Tracked:
    store: Path  # the folder holding mlflow.db
    cwd: Path  # where the main run's command ran
    uri: str
    client: MlflowClient
    run: Run  # the main run: sgvb_b, latent 2, EPOCHS epochs, seed 1
    proc: subprocess.CompletedProcess[str]
    other: subprocess.CompletedProcess[str]  # started at the same moment on the same new store
    decoy: Path  # the store named by MLFLOW_TRACKING_URI for the other process, which passed --tracking-uri


def local_path(uri: str, tracking_uri: str) -> Path:
    """Where an artifact URI of the store lives on disk (store-relative ``mlflow-artifacts:/`` or ``file://``)."""
    return local_artifacts(uri, tracking_uri) or Path(url2pathname(urlparse(uri).path))


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """bench.run from ``cwd``, importing this checkout's bench (not whichever one is installed)."""
    return subprocess.Popen([sys.executable, "-m", "bench.run", *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **ONE_THREAD, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """Two bench.run processes started at the same moment on one new store (MLflow 3.17 alone crashes in
    its schema migration then). The main one finds the store through MLFLOW_TRACKING_URI only and runs from
    another folder; the other passes --tracking-uri, which must win over its decoy MLFLOW_TRACKING_URI."""
    store, cwd, cwd2 = (tmp_path_factory.mktemp(n) for n in ("store", "elsewhere", "elsewhere2"))
    uri = f"sqlite:///{store / 'mlflow.db'}"
    decoy = tmp_path_factory.mktemp("decoy")
    common = ["--latent", "2", "--device", "cpu", "--no-progress"]
    procs = [
        start(["--variant", "sgvb_b", "--epochs", str(EPOCHS), "--limit-train", "500", "--seed", "1", *common],
              cwd, {"MLFLOW_TRACKING_URI": uri}),
        start(["--epochs", "1", "--limit-train", "200", "--seed", "2", "--tracking-uri", uri, *common],
              cwd2, {"MLFLOW_TRACKING_URI": f"sqlite:///{decoy / 'mlflow.db'}"}),
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert done[0].returncode == 0, done[0].stderr
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vae-bench")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string="params.seed = '1'")
    assert len(runs) == 1
    return Tracked(store, cwd, uri, client, runs[0], done[0], done[1], decoy)


@pytest.fixture
def model_uri_context(tracked: Tracked) -> Iterator[None]:
    """The fluent API's tracking URI for one test, restored afterwards (environment included)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    with _use_tracking_uri(tracked.uri):
        yield
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env


def test_run_is_finished_with_the_documented_name(tracked: Tracked) -> None:
    assert tracked.run.info.status == "FINISHED"
    assert tracked.run.info.run_name == "sgvb_b-z2-L1-s1"


def test_params_hold_every_axis_and_setting(tracked: Tracked) -> None:
    params = tracked.run.data.params
    for key, value in PARAMS.items():
        assert params.get(key) == value, (key, params.get(key))
    assert params["data"] == "mnist" and len(params["data_digest"]) == 8


def test_metric_histories_have_one_value_per_epoch(tracked: Tracked) -> None:
    histories = {}
    for name in PER_EPOCH:
        history = tracked.client.get_metric_history(tracked.run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), name
        assert all(math.isfinite(m.value) for m in history), name
        histories[name] = {m.step: m.value for m in history}
    for step in range(1, EPOCHS + 1):
        for part in ("train", "test"):
            loss = histories[f"{part}_loss"][step]
            assert loss == pytest.approx(histories[f"{part}_recon"][step] + histories[f"{part}_kld"][step],
                                         rel=1e-6, abs=1e-3)


def test_stdout_has_the_seeds_epoch_lines_and_the_ui_address(tracked: Tracked) -> None:
    out = tracked.proc.stdout
    for epoch in range(1, EPOCHS + 1):
        assert f"====> Epoch: {epoch} Average loss: " in out
    info = tracked.run.info
    # The classic "Model training" run page (MLflow 3.17 opens the GenAI view without the query), served by
    # `mlflow ui` given the store and its artifacts folder.
    assert (f"browse it with `mlflow ui --backend-store-uri {tracked.uri} --artifacts-destination "
            f"{tracked.store / ARTIFACTS_DIR}` at http://127.0.0.1:5000/#/experiments/{info.experiment_id}/runs/"
            f"{info.run_id}?workflowType=machine_learning") in out
    assert "Traceback" not in tracked.proc.stderr
    assert " WARNING mlflow" not in tracked.proc.stderr + out  # e.g. log_model's pickle note: the user can't act on it


def test_artifacts_images_and_one_checkpoint(tracked: Tracked) -> None:
    run_id = tracked.run.info.run_id
    images = {Path(f.path).name for f in tracked.client.list_artifacts(run_id, "images")}
    expected = {f"{kind}_{e:03d}.png" for kind in ("reconstruction", "samples") for e in range(1, EPOCHS + 1)}
    assert expected <= images
    checkpoints = [f.path for f in tracked.client.list_artifacts(run_id, "checkpoint")]
    assert checkpoints == [CHECKPOINT]  # the latest only, overwritten each epoch
    with tempfile.TemporaryDirectory() as tmp:
        path = tracked.client.download_artifacts(run_id, CHECKPOINT, tmp)
        state = torch.load(path, weights_only=True)
    assert state["epoch"] == EPOCHS
    assert {"model", "optimizer", "torch_rng"} <= set(state)


def test_image_artifacts_are_pngs_of_the_seeds_grids(tracked: Tracked) -> None:
    from PIL import Image

    root = local_path(tracked.run.info.artifact_uri, tracked.uri)
    with Image.open(root / "images" / "reconstruction_001.png") as im:
        w, h = im.size
    assert (w, h) == (8 * 28 + 9 * 2, 2 * 28 + 3 * 2)  # 8 digits above their reconstructions, torchvision padding
    with Image.open(root / "images" / "samples_001.png") as im:
        assert im.size == (8 * 28 + 9 * 2, 8 * 28 + 9 * 2)  # 64 samples


def test_artifacts_live_beside_the_database_not_in_the_working_directory(tracked: Tracked) -> None:
    experiment = tracked.client.get_experiment(tracked.run.info.experiment_id)
    assert experiment.artifact_location == "mlflow-artifacts:/vae-bench"  # relative to the store: it can move
    assert tracked.run.info.artifact_uri.startswith("mlflow-artifacts:/vae-bench/")
    artifacts = local_path(tracked.run.info.artifact_uri, tracked.uri)
    assert artifacts.is_relative_to(tracked.store / ARTIFACTS_DIR)
    assert (artifacts / CHECKPOINT).is_file() and (artifacts / "images" / "samples_001.png").is_file()
    assert list(tracked.cwd.iterdir()) == []  # no mlruns/, no mlflow.db where the user stood
    for folder in ("mlruns", ARTIFACTS_DIR):
        assert not any((REPO / folder).glob(f"**/{tracked.run.info.run_id}"))


def test_mlflow_tracking_uri_env_is_honoured(tracked: Tracked) -> None:
    """The fixture gave the store only through MLFLOW_TRACKING_URI; the run is there, and not in the cwd."""
    assert (tracked.store / "mlflow.db").is_file()
    assert not (tracked.cwd / "mlflow.db").exists()


def test_resolve_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None) == "sqlite:///env.db"
    assert resolve_tracking_uri("sqlite:///flag.db") == "sqlite:///flag.db"


def test_experiment_is_tagged_for_the_model_training_view_and_described(tracked: Tracked) -> None:
    experiment = tracked.client.get_experiment(tracked.run.info.experiment_id)
    assert experiment.name == "vae-bench"
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert experiment.tags[NOTE_TAG] == EXPERIMENT_NOTES[DEFAULT_EXPERIMENT]


def test_runs_record_their_source_user_and_commit(tracked: Tracked) -> None:
    """MLflow's context tags, shown on the run page as Source and Created by; the commit is the one of the checkout
    holding the bench package (this repository), whatever the working directory was (here: a temporary folder)."""
    tags = tracked.run.data.tags
    assert tags[SOURCE_NAME_TAG] == "bench.run" and tags[SOURCE_TYPE_TAG] == "LOCAL" and tags[USER_TAG]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the suite is not running from a git checkout")
    assert tags[GIT_COMMIT_TAG] == head.stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    assert tags[GIT_DIRTY_TAG] == str(bool(dirty.stdout.strip())).lower()


def test_dataset_input_is_logged(tracked: Tracked, mnist: MNIST) -> None:
    run = tracked.client.get_run(tracked.run.info.run_id)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "mnist" and dataset.digest == mnist.digest
    assert {t.key: t.value for t in inputs[0].tags}.get("mlflow.data.context") == "train"


def test_logged_model_loads_with_encode_and_decode(tracked: Tracked, model_uri_context: None, mnist: MNIST) -> None:
    model = mlflow.pytorch.load_model(f"runs:/{tracked.run.info.run_id}/model")
    x = mnist.test_x[:5]
    with torch.no_grad():
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (5, 2)
        logits = model.decode(mu)
    assert logits.shape == (5, 784) and torch.isfinite(logits).all()
    with tempfile.TemporaryDirectory() as tmp:  # the logged model is the trained one
        state = torch.load(tracked.client.download_artifacts(tracked.run.info.run_id, CHECKPOINT, tmp),
                           weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key


def test_two_processes_can_open_a_new_store_at_once(tracked: Tracked) -> None:
    assert tracked.other.returncode == 0, tracked.other.stderr
    runs = tracked.client.search_runs([tracked.run.info.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["sgvb_b-z2-L1-s1", "sgvb_b-z2-L1-s2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(tracked.client.search_experiments(filter_string="name = 'vae-bench'")) == 1


def test_tracking_uri_flag_wins_over_the_environment(tracked: Tracked) -> None:
    assert list(tracked.decoy.iterdir()) == []


# ---------------------------------------------------------------- the tracker alone, in-process


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    return open_store(f"sqlite:///{tmp_path_factory.mktemp('tracker') / 'mlflow.db'}")


def test_tracker_logs_batched_metrics_params_and_tags(store: MlflowClient) -> None:
    tracker = MlflowTracker.start(store, "unit", "r1", {"a": 1, "b": None, "c": 0.5}, tags={"t": "x"})
    tracker.log_metrics({"m": 1.0, "n": 2.0}, step=1)
    tracker.log_metrics({"m": 0.5, "n": 1.5}, step=2)
    tracker.set_tags({"u": "y"})
    run = store.get_run(tracker.run_id)
    assert run.info.run_name == "r1" and run.info.status == "RUNNING"
    assert run.data.params == {"a": "1", "b": "None", "c": "0.5"}
    assert run.data.tags["t"] == "x" and run.data.tags["u"] == "y"
    assert [(m.step, m.value) for m in store.get_metric_history(tracker.run_id, "m")] == [(1, 1.0), (2, 0.5)]
    tracker.finish("KILLED")
    assert store.get_run(tracker.run_id).info.status == "KILLED"
    tracker.mark_running()
    assert store.get_run(tracker.run_id).info.status == "RUNNING"
    tracker.finish()
    assert store.get_run(tracker.run_id).info.status == "FINISHED"


def test_tracker_keeps_only_the_latest_checkpoint(store: MlflowClient) -> None:
    tracker = MlflowTracker.start(store, "unit", "r2", {})
    assert tracker.load_checkpoint() is None
    for epoch in (1, 2, 3):
        tracker.save_checkpoint({"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}})
    assert [f.path for f in store.list_artifacts(tracker.run_id, "checkpoint")] == [CHECKPOINT]
    state = tracker.load_checkpoint()
    assert state is not None and state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.full((3,), 3.0))


def test_tracker_log_model_keeps_the_run_status_and_the_environment(store: MlflowClient) -> None:
    """Logging the model uses the fluent API; it must not finish a KILLED run, nor leave the store's URI
    behind as MLFLOW_TRACKING_URI (later runs of the process would go to this store)."""
    from variants.model import VAE

    env = os.environ.get("MLFLOW_TRACKING_URI")
    tracker = MlflowTracker.start(store, "unit", "r3", {})
    tracker.finish("KILLED")
    tracker.log_model(VAE(latent=2, hidden=8))
    assert store.get_run(tracker.run_id).info.status == "KILLED"
    assert os.environ.get("MLFLOW_TRACKING_URI") == env


def test_log_model_pins_its_requirements_without_scanning_the_installed_packages(store: MlflowClient) -> None:
    """MLflow's requirement check maps every installed distribution (1.5 s a process): skipped, and restored
    after; the model still records mlflow's and torch's versions."""
    from mlflow.utils import environment, requirements_utils

    from variants.model import VAE

    check = environment.warn_dependency_requirement_mismatches
    scanned, requirements_utils._MODULES_TO_PACKAGES = requirements_utils._MODULES_TO_PACKAGES, None
    try:
        tracker = MlflowTracker.start(store, "unit", "r5", {})
        tracker.log_model(VAE(latent=2, hidden=8))
        assert requirements_utils._MODULES_TO_PACKAGES is None  # no scan was made
    finally:
        requirements_utils._MODULES_TO_PACKAGES = scanned
    assert environment.warn_dependency_requirement_mismatches is check
    (model,) = tracker.logged_models()
    with _use_tracking_uri(store.tracking_uri):
        path = mlflow.pyfunc.get_model_dependencies(f"models:/{model.model_id}")
    assert Path(path).read_text().split() == [f"mlflow=={mlflow.__version__}",
                                             f"torch=={torch.__version__.split('+')[0]}"]


def test_experiment_artifact_location_is_beside_a_new_store(store: MlflowClient) -> None:
    tracker = MlflowTracker.start(store, "another experiment", "r4", {})
    experiment = store.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == "mlflow-artifacts:/another_experiment"
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert experiment.tags[NOTE_TAG] == OTHER_EXPERIMENT_NOTE


@pytest.mark.parametrize("uri, message", [
    ("./mlruns", "file store"),
    ("file:///tmp/mlruns", "file store"),
    ("sqlite:////nonexistent-folder-for-vae-bench/mlflow.db", "does not exist"),
    ("http://127.0.0.1:9", "not reachable"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:9/db", "cannot be reached"),  # refused: no minutes of retries
    ("postgresql+psycopg2://u:secret@host:notaport/db", "malformed"),
])
def test_open_store_refuses_what_it_cannot_use(uri: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        open_store(uri)


def test_a_store_to_read_is_not_created_when_missing(tmp_path: Path) -> None:
    """bench.report and bench.evaluate read a store (bench.run --resume adds to one): a wrong path must not leave
    an empty mlflow.db behind, only a line saying there is no store."""
    with pytest.raises(UserError, match=f"there is no tracking store at {tmp_path / 'mlflow.db'}"):
        open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", existing=True)
    assert list(tmp_path.iterdir()) == []
    open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a command that makes runs creates it
    assert (tmp_path / "mlflow.db").is_file()
    open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", existing=True)


def test_runs_started_at_once_all_log_the_same_dataset(store: MlflowClient) -> None:
    """MLflow looks for the dataset row, then inserts it: writers that meet a new experiment at the same
    moment (grid and tune workers do) must not fail on the unique (experiment, name, digest) row."""
    import threading

    workers, rounds = 4, 5
    errors: list[BaseException] = []
    for r in range(rounds):
        trackers = [MlflowTracker.start(MlflowClient(store.tracking_uri), f"race {r}", f"w{i}", {})
                    for i in range(workers)]
        barrier = threading.Barrier(workers)

        def log(tracker: MlflowTracker, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                tracker.log_dataset("mnist", "d1g3st", "/data", "train", torch.zeros(1, 4).numpy())
            except BaseException as e:  # noqa: BLE001 - collected and asserted on below
                errors.append(e)

        threads = [threading.Thread(target=log, args=(t,)) for t in trackers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for t in trackers:
            (ds,) = store.get_run(t.run_id).inputs.dataset_inputs
            assert ds.dataset.digest == "d1g3st"


def test_a_tracker_resolves_its_artifact_folder_once_and_writes_into_its_own_store(tmp_path: Path) -> None:
    """An epoch logs three artifacts; MlflowClient.log_artifact would look the run up for each (MLflow's run-id
    cache is off, bench.tracking.artifacts), so the tracker keeps its run's repository. Two stores holding the
    same run id (a copied store) still get their own artifacts."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    client_a = open_store(f"sqlite:///{a / 'mlflow.db'}")
    tracker_a = MlflowTracker.start(client_a, "e", "r", {"seed": 1})
    tracker_a.log_artifact(Path(__file__), "code")
    shutil.copytree(a, b)
    lookups = []
    service = client_a._tracking_client  # where MlflowClient.log_artifact looks the run up
    get_run = service.get_run
    service.get_run = lambda run_id: lookups.append(run_id) or get_run(run_id)  # counts, then the real call
    for k in range(3):
        note = tmp_path / f"note_{k}.txt"
        note.write_text(str(k))
        tracker_a.log_artifact(note, "notes")
    tracker_a.save_checkpoint({"epoch": 1})
    assert lookups == []  # resolved on the first call, before the copy
    tracker_b = MlflowTracker(open_store(f"sqlite:///{b / 'mlflow.db'}"), tracker_a.run_id)
    (tmp_path / "note_b.txt").write_text("b")
    tracker_b.log_artifact(tmp_path / "note_b.txt", "notes")
    run_a = local_path(client_a.get_run(tracker_a.run_id).info.artifact_uri, client_a.tracking_uri)
    run_b = local_path(tracker_b.client.get_run(tracker_a.run_id).info.artifact_uri, tracker_b.client.tracking_uri)
    assert run_a.is_relative_to(a) and run_b.is_relative_to(b)
    assert sorted(p.name for p in (run_a / "notes").iterdir()) == ["note_0.txt", "note_1.txt", "note_2.txt"]
    assert sorted(p.name for p in (run_b / "notes").iterdir()) == ["note_b.txt"]
    assert (run_a / CHECKPOINT).is_file() and not (run_b / CHECKPOINT).exists()
