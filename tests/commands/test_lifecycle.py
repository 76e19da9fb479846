"""Signal windows and concurrency, as issue 13 found them, with real processes, real signals and real SQLite
stores: a signal during start-up, right after the run is made, right after a resume begins, twice in a row;
an evaluation while the run trains; two resumes at once; Ctrl-C in a huge NLL estimate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import FAILURE_TAG, OWNER_TAG
from tests.commands.test_cli import ONE_THREAD, LineReader, only_run, time_limit
from tests.conftest import CODE, copy_store

TINY = ["--limit-train", "1000", "--latent", "2", "--device", "cpu", "--no-progress"]
ENV = {**ONE_THREAD, **CODE, "PYTHONUNBUFFERED": "1"}


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0  # from the signal to the exit


def popen(module: str, args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env={**os.environ, **ENV}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def signal_on(proc: subprocess.Popen[str], prefix: str | None, signals: list[int], delay: float = 0.0,
              gap: float = 0.05, timeout: float = 240) -> Proc:
    """Wait for a stdout line starting with ``prefix`` (or ``delay`` seconds), send ``signals`` ``gap`` apart."""
    reader = LineReader(proc)
    try:
        if prefix is not None:
            reader.wait_for(prefix, timeout=timeout)
        time.sleep(delay)
        t0 = time.monotonic()
        for s in signals:
            proc.send_signal(s)
            time.sleep(gap)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    seconds = time.monotonic() - t0
    rest = []
    while (line := reader.lines.get()) is not None:
        rest.append(line)
    return Proc(rc, "".join(reader.seen + rest), proc.stderr.read(), seconds)


def finished(proc: subprocess.Popen[str], timeout: float = 300) -> Proc:
    out, err = proc.communicate(timeout=timeout)
    return Proc(proc.returncode, out, err)


@dataclass
class Results:
    root: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    uris: dict[str, str] = field(default_factory=dict)


def during_start_up(root: Path, res: Results) -> None:
    """SIGINT 1 s after start, while torch and MLflow are still being imported: no run, one line."""
    folder = root / "startup"
    res.uris["startup"] = copy_store(res.migrated, folder)
    proc = popen("bench.run", ["--epochs", "1", *TINY, "--tracking-uri", res.uris["startup"]], folder)
    res.procs["startup"] = signal_on(proc, None, [signal.SIGINT], delay=1.0)


def right_after_the_run_is_made(root: Path, res: Results) -> None:
    """SIGINT as soon as the run's id is printed, then SIGINT as soon as its resume begins."""
    folder = root / "born"
    res.uris["born"] = uri = copy_store(res.migrated, folder)
    proc = popen("bench.run", ["--epochs", "2", *TINY, "--tracking-uri", uri], folder)
    res.procs["born"] = signal_on(proc, "started run ", [signal.SIGINT])
    run_id = only_run(uri).info.run_id
    res.procs["born_status"] = Proc(0, only_run(uri).info.status, only_run(uri).data.tags.get(FAILURE_TAG, ""))
    proc = popen("bench.run", ["--resume", run_id, "--tracking-uri", uri, "--no-progress"], folder)
    res.procs["resume_window"] = signal_on(proc, "resuming run ", [signal.SIGTERM])
    res.procs["resume_status"] = Proc(0, only_run(uri).info.status, only_run(uri).data.tags.get(FAILURE_TAG, ""))
    res.procs["resumed"] = finished(popen("bench.run", ["--resume", run_id, "--tracking-uri", uri, "--no-progress"],
                                          folder))


def double_ctrl_c_then_two_resumes(root: Path, res: Results) -> None:
    folder = root / "double"
    res.uris["double"] = uri = copy_store(res.migrated, folder)
    proc = popen("bench.run", ["--epochs", "50", *TINY, "--tracking-uri", uri], folder)
    res.procs["double"] = signal_on(proc, "====> Epoch: 1 ", [signal.SIGINT, signal.SIGINT, signal.SIGINT],
                                    gap=0.02)
    run_id = only_run(uri).info.run_id
    res.procs["double_status"] = Proc(0, only_run(uri).info.status, "")
    racers = [popen("bench.run", ["--resume", run_id, "--epochs", "3", "--tracking-uri", uri, "--no-progress"],
                    folder) for _ in range(2)]
    res.procs["race_a"], res.procs["race_b"] = (finished(p) for p in racers)


def evaluate_while_training(root: Path, res: Results) -> None:
    """Two bench.evaluate as soon as epoch 1 of 12 is done: one refused, one (--wait) waiting for the end."""
    folder = root / "evaluate"
    res.uris["evaluate"] = uri = copy_store(res.migrated, folder)
    trainer = popen("bench.run", ["--epochs", "12", "--limit-train", "5000", "--latent", "2", "--device", "cpu",
                                  "--no-progress", "--tracking-uri", uri], folder)
    reader = LineReader(trainer)
    try:
        reader.wait_for("====> Epoch: 1 ", timeout=240)
        run_id = only_run(uri).info.run_id
        args = ["--run-id", run_id, "--tracking-uri", uri, "--nll-samples", "10", "--device", "cpu", "--no-progress"]
        refused, waiting = popen("bench.evaluate", args, folder), popen("bench.evaluate", [*args, "--wait"], folder)
        res.procs["refused"], res.procs["waited"] = finished(refused), finished(waiting)
        res.procs["trainer"] = Proc(trainer.wait(timeout=300), "", "")
    finally:
        if trainer.poll() is None:
            trainer.kill()
    # Ctrl-C 2.5 s into a test NLL that would take hours (its test ELBO takes a fraction of a second before): it
    # stops within seconds.
    proc = popen("bench.evaluate", ["--run-id", run_id, "--tracking-uri", uri, "--nll-samples", "100000000",
                                    "--device", "cpu", "--no-progress"], folder)
    res.procs["nll"] = signal_on(proc, "evaluating run ", [signal.SIGINT], delay=2.5)


@pytest.fixture(scope="module")
def res(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Results:
    root = tmp_path_factory.mktemp("lifecycle")
    results = Results(root)
    results.migrated = migrated_store  # type: ignore[attr-defined]
    jobs = (evaluate_while_training, right_after_the_run_is_made, double_ctrl_c_then_two_resumes, during_start_up)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for f in [pool.submit(job, root, results) for job in jobs]:
            f.result()
    return results


def assert_clean(p: Proc) -> None:
    for text in (p.stdout, p.stderr):
        assert "Traceback" not in text and "Exception ignored" not in text, text


def test_a_signal_during_start_up_leaves_no_run_and_one_line(res: Results) -> None:
    p = res.procs["startup"]
    assert p.returncode == 128 + signal.SIGINT and p.seconds < time_limit(2)
    assert_clean(p)
    assert p.stderr.strip().splitlines() == ["python -m bench.run: interrupted before a run was made; nothing "
                                             "recorded (SIGINT)"]
    client = MlflowClient(res.uris["startup"])
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_a_signal_right_after_the_run_is_made_kills_it_with_its_params(res: Results) -> None:
    p = res.procs["born"]
    assert p.returncode == 130
    assert_clean(p)
    status, failure = res.procs["born_status"].stdout, res.procs["born_status"].stderr
    assert status == "KILLED" and "SIGINT" in failure
    assert only_run(res.uris["born"]).data.params["variant"] == "sgvb_b"  # resumable: it has its params


def test_a_signal_right_after_a_resume_begins_kills_it_with_the_reason(res: Results) -> None:
    p = res.procs["resume_window"]
    assert p.returncode == 130
    assert_clean(p)
    assert res.procs["resume_status"].stdout == "KILLED" and "SIGTERM" in res.procs["resume_status"].stderr
    done = res.procs["resumed"]
    assert done.returncode == 0, done.stderr
    run = only_run(res.uris["born"])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(res.uris["born"]).get_metric_history(run.info.run_id, "train_loss")]
    assert steps == [1, 2]
    assert not [k for k in run.data.tags if k.startswith(OWNER_TAG.format(""))]  # every claim given up


def test_a_double_ctrl_c_kills_the_run_quietly(res: Results) -> None:
    p = res.procs["double"]
    assert p.returncode == 130 and p.seconds < time_limit(10)
    assert_clean(p)
    assert "killed; resume it with --resume" in p.stderr
    assert res.procs["double_status"].stdout == "KILLED"


def test_two_resumes_at_once_one_trains_the_other_is_refused(res: Results) -> None:
    a, b = res.procs["race_a"], res.procs["race_b"]
    assert sorted([a.returncode, b.returncode]) == [0, 2], (a.stderr, b.stderr)
    refused = a if a.returncode == 2 else b
    assert_clean(refused)
    (line,) = refused.stderr.strip().splitlines()
    assert "is being trained by process" in line and "--wait" in line
    uri = res.uris["double"]
    run = only_run(uri)
    client = MlflowClient(uri)
    assert run.info.status == "FINISHED"
    for name in ("train_loss", "test_loss", "epoch_seconds"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2, 3], name
    assert len(MlflowTracker(client, run.info.run_id).logged_models()) == 1


def test_evaluate_is_refused_while_the_run_trains_and_waits_when_asked(res: Results) -> None:
    refused, waited = res.procs["refused"], res.procs["waited"]
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "is being trained by process" in line and "since" in line and "--wait" in line
    assert waited.returncode == 0, waited.stderr
    assert "waiting for run" in waited.stdout and "its model of epoch 12" in waited.stdout
    assert res.procs["trainer"].returncode == 0
    uri = res.uris["evaluate"]
    run = only_run(uri)
    assert run.info.status == "FINISHED"  # no stale status written back
    nll = MlflowClient(uri).get_metric_history(run.info.run_id, "test_nll")
    assert [m.step for m in nll] == [12]  # at the epoch of the model it evaluated


def test_ctrl_c_stops_a_huge_nll_estimate_within_seconds(res: Results) -> None:
    p = res.procs["nll"]
    assert p.returncode == 130 and p.seconds < time_limit(5), (p.seconds, p.stderr)
    assert_clean(p)
    run = only_run(res.uris["evaluate"])
    assert not [k for k in run.data.tags if k.startswith(OWNER_TAG.format(""))]


def test_the_run_id_and_its_link_are_printed_as_soon_as_the_run_exists(res: Results) -> None:
    lines = res.procs["double"].stdout.splitlines()
    run_id = only_run(res.uris["double"]).info.run_id
    assert lines[0].startswith(f"started run {run_id} (sgvb_b-z2-L1-s1); follow it at http")
    assert lines[1].startswith("====> Epoch: 1 ")
