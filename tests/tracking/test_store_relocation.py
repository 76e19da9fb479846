"""A store is one folder that survives ``mv`` and ``cp -r`` (issue 13, item 4): the real commands, a real moved
folder and a real copy. After the move, evaluate finds the model, resume the checkpoint and the report the
pictures; after the copy, what is written in one store never appears in the other. A store made before artifacts
became store-relative is refused in one line once moved.

The commands run in this process, from another working directory (what a subprocess would add is start-up, which
tests/commands covers); the refusals run as processes, since their one line and exit status are what is tested."""

from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from bench.tracking.artifacts import ARTIFACTS_DIR
from bench.tracking.names import CHECKPOINT
from tests.conftest import REPO, run_cli

SMALL = ["--variant", "sgvb_b", "--latent", "2", "--limit-train", "300", "--device", "cpu", "--no-progress"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def bench(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(module, *args, cwd=cwd, env=ENV, timeout=600)


def tree(folder: Path) -> dict[str, str]:
    """Every file under folder with the md5 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoint_epoch(uri: str, run_id: str, tmp: Path) -> int:
    path = MlflowClient(uri).download_artifacts(run_id, CHECKPOINT, str(tmp))
    return int(torch.load(path, weights_only=True)["epoch"])


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def command(module: str, *args: str) -> int:
    """``python -m module args`` in this process: the command's own main(), as its __main__ calls it."""
    return importlib.import_module(module).main(list(args))


def test_a_moved_store_works_and_a_copied_one_is_independent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              one_thread: None) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must resolve against the store, not the working directory
    a = tmp_path / "A"
    a.mkdir()
    assert command("bench.run", *SMALL, "--epochs", "1", "--tracking-uri", f"sqlite:///{a / 'mlflow.db'}") == 0
    client = MlflowClient(f"sqlite:///{a / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vae-bench").experiment_id])
    run_id = run.info.run_id
    assert (a / ARTIFACTS_DIR).is_dir() and not (a / "mlruns").exists()

    b = tmp_path / "B"
    shutil.move(a, b)  # mv A B
    uri_b = f"sqlite:///{b / 'mlflow.db'}"
    assert command("bench.evaluate", "--run-id", run_id, "--tracking-uri", uri_b, "--nll-samples", "5",
                   "--device", "cpu", "--no-progress") == 0  # the model is found
    assert "test_nll" in MlflowClient(uri_b).get_run(run_id).data.metrics
    capsys.readouterr()
    assert command("bench.run", "--resume", run_id, "--epochs", "2", "--tracking-uri", uri_b, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "resuming run" in out and "after epoch 1" in out  # the checkpoint is found
    assert checkpoint_epoch(uri_b, run_id, tmp_path) == 2
    report = tmp_path / "report"
    assert command("bench.report", "--tracking-uri", uri_b, "--out", str(report)) == 0
    assert "not logged" not in (report / "report.md").read_text()  # the pictures are found
    assert list(report.rglob("*reconstruction*.png")) and list(report.rglob("*samples*.png"))
    assert not a.exists()

    c = tmp_path / "C"
    shutil.copytree(b, c)  # cp -r B C
    uri_c = f"sqlite:///{c / 'mlflow.db'}"
    before_b = tree(b)
    assert command("bench.run", "--resume", run_id, "--epochs", "3", "--tracking-uri", uri_c, "--no-progress") == 0
    assert checkpoint_epoch(uri_c, run_id, tmp_path / "c") == 3
    assert tree(b) == before_b  # nothing of C's resume landed in B
    assert checkpoint_epoch(uri_b, run_id, tmp_path / "b") == 2
    steps_b = [m.step for m in MlflowClient(uri_b).get_metric_history(run_id, "train_loss")]
    assert steps_b == [1, 2]
    before_c = tree(c)
    assert command("bench.evaluate", "--run-id", run_id, "--tracking-uri", uri_b, "--nll-samples", "5",
                   "--device", "cpu", "--no-progress") == 0
    assert tree(c) == before_c  # nor B's evaluation in C


def test_an_old_store_that_was_moved_is_refused_in_one_line(tmp_path: Path) -> None:
    """Stores made before store-relative artifacts hold absolute ``file://.../mlruns/<experiment>`` paths: moved
    or copied, they point at nothing or into their original. Every command refuses them before it writes."""
    old = tmp_path / "old"
    old.mkdir()
    client = MlflowClient(f"sqlite:///{old / 'mlflow.db'}")
    exp = client.create_experiment("vae-bench", artifact_location=(old / "mlruns" / "vae-bench").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifact(run_id, str(Path(__file__)), "code")
    assert (old / "mlruns" / "vae-bench" / run_id / "artifacts" / "code").is_dir()
    moved = tmp_path / "moved"
    shutil.move(old, moved)
    uri = f"sqlite:///{moved / 'mlflow.db'}"
    for module, args in [("bench.evaluate", ["--run-id", run_id]), ("bench.report", ["--out", str(tmp_path / "r")]),
                         ("bench.run", SMALL + ["--epochs", "1"])]:
        line = one_line(bench(module, *args, "--tracking-uri", uri, cwd=tmp_path))
        assert f"was moved or copied from {old}" in line and "cannot move" in line, line
    assert len(MlflowClient(uri).search_runs([exp])) == 1  # no run was made


@pytest.mark.parametrize("where", ["unmoved"])
def test_an_old_store_in_place_still_opens(tmp_path: Path, where: str) -> None:
    from bench.tracking.store import open_store

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("vae-bench", artifact_location=(tmp_path / "mlruns" / "vae-bench").as_uri())
    assert open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", existing=True).get_experiment_by_name("vae-bench")


def test_plain_mlflow_reads_a_store_through_the_entry_point(tmp_path: Path, migrated_store: Path) -> None:
    """pyproject.toml declares the resolver as an MLflow plugin (entry point mlflow.artifact_repository): a script
    that never imports bench reads a store's artifacts. The entry point is installed here as pip would write it."""
    import tomllib

    from tests.conftest import copy_store

    uri = copy_store(migrated_store, tmp_path / "store")
    from bench.tracking.store import open_store

    tracker = __import__("bench.tracking.mlflow_tracker", fromlist=["MlflowTracker"]).MlflowTracker.start(
        open_store(uri), "vae-bench", "r", {})
    tracker.log_artifact(Path(__file__), "code")
    points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    dist = tmp_path / "site" / "vae_bench_plugin-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vae-bench-plugin\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[mlflow.artifact_repository]\n" + "".join(
        f"{k} = {v}\n" for k, v in points["mlflow.artifact_repository"].items()))
    script = ("import sys, mlflow.artifacts\n"
              f"p = mlflow.artifacts.download_artifacts(run_id={tracker.run_id!r}, artifact_path='code', "
              f"tracking_uri={uri!r}, dst_path={str(tmp_path / 'out')!r})\n"
              "print(sorted(__import__('os').listdir(p)))\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path / 'site'}:{REPO}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(__file__).name in done.stdout
