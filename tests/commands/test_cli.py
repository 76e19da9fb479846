"""python -m bench.run as a user runs it: user errors, --list, a NaN run, Ctrl-C / SIGTERM and --resume.

Every process runs in a temporary working directory with its own SQLite store, so nothing lands in the
repository. The quick error cases run concurrently (each one is mostly interpreter start-up).
"""

from __future__ import annotations

import gzip
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from bench.core.data import MD5, bundled_dir
from bench.tracking.names import CHECKPOINT, FAILURE_TAG
from tests.conftest import CODE, copy_store, run_cli
from variants.registry import REGISTRY

PROG = "python -m bench.run"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # several processes share 2 cores: one thread each is faster
TINY = ["--limit-train", "1000", "--latent", "2", "--device", "cpu", "--no-progress"]


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess[str]
    seconds: float


def time_limit(seconds: float) -> float:
    """``seconds`` on an idle machine, stretched by the 1-minute load average per CPU when other processes
    compete for the CPUs (a shared CI box, parallel test runs): a user's wait, not the neighbours'."""
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def timed_cli(args: list[str], cwd: Path) -> Outcome:
    t0 = time.monotonic()
    proc = run_cli("bench.run", *args, cwd=cwd, env=ONE_THREAD, timeout=time_limit(120))  # a loaded box is slow
    return Outcome(proc, time.monotonic() - t0)


def corrupt_data_dir(folder: Path) -> Path:
    """The four bundled files, one of them with a byte flipped inside (still a valid .gz)."""
    folder.mkdir()
    for stem in MD5:
        shutil.copy(bundled_dir() / f"{stem}.gz", folder / f"{stem}.gz")
    target = folder / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(target.read_bytes()))
    data[500] ^= 0x04
    target.write_bytes(gzip.compress(bytes(data)))
    return folder


def broken_deflate_dir(folder: Path) -> Path:
    """The four bundled files, one with garbage in its deflate stream behind a valid gzip header (zlib.error)."""
    folder.mkdir()
    for stem in MD5:
        shutil.copy(bundled_dir() / f"{stem}.gz", folder / f"{stem}.gz")
    target = folder / "t10k-labels-idx1-ubyte.gz"
    raw = target.read_bytes()
    target.write_bytes(raw[:10] + b"\xff" * 64 + raw[74:])
    return folder


def missing_data_dir(folder: Path) -> Path:
    folder.mkdir()
    for stem in list(MD5)[:3]:
        shutil.copy(bundled_dir() / f"{stem}.gz", folder / f"{stem}.gz")
    return folder


# name -> (arguments, phrases the one-line error must contain: what was wrong and what is accepted)
ERROR_CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown_variant": (["--variant", "sgvb_z"], ["--variant", "sgvb_z", "sgvb_a", "sgvb_b", "iwae_k5"]),
    "latent_zero": (["--latent", "0"], ["--latent", "positive integer"]),
    "latent_not_a_number": (["--latent", "abc"], ["--latent", "'abc'", "integer"]),
    "negative_epochs": (["--epochs", "-1"], ["--epochs", "-1", "0 or more"]),
    "batch_size_zero": (["--batch-size", "0"], ["--batch-size", "positive integer"]),
    "samples_zero": (["--samples", "0"], ["--samples", "positive integer"]),
    "unknown_decoder": (["--decoder", "poisson"], ["--decoder", "poisson", "bernoulli", "gaussian"]),
    "empty_experiment": (["--experiment", " "], ["--experiment", "the name is empty"]),
    "gaussian_variance_on_bernoulli": (["--gaussian-variance", "0.5"],
                                       ["--gaussian-variance", "Bernoulli", "--decoder gaussian"]),
    "unknown_resume_id": (["--resume", "0123456789abcdef0123456789abcdef"],
                          ["0123456789abcdef0123456789abcdef", "made by bench.run"]),
    "corrupt_data": (["--data-dir", "{corrupt}"],
                     ["t10k-labels-idx1-ubyte.gz", "corrupt", MD5["t10k-labels-idx1-ubyte"]]),
    "missing_data": (["--data-dir", "{missing}"], ["t10k-labels-idx1-ubyte", "not found", "four IDX files"]),
    "broken_deflate_stream": (["--data-dir", "{deflate}"], ["t10k-labels-idx1-ubyte.gz", "invalid block type"]),
    "unreachable_tracking_server": (["--tracking-uri", "http://127.0.0.1:9"],
                                    ["http://127.0.0.1:9", "not reachable", "sqlite:///"]),
    "unreachable_tracking_database": (["--tracking-uri", "postgresql+psycopg2://bench:secret@127.0.0.1:9/db"],
                                      ["postgresql+psycopg2://bench:***@127.0.0.1:9/db", "cannot be reached",
                                       "sqlite:///"]),
}


ARGPARSE_CASES = ("unknown_variant", "latent_zero", "latent_not_a_number", "negative_epochs", "batch_size_zero",
                  "samples_zero", "unknown_decoder", "empty_experiment")
# These fail before torch or MLflow is imported: a real process each (its start-up is what a user waits for).
# The rest (bad data, an unknown run, an unreachable store) import torch and MLflow first; they run in this
# process, through the same main_guard (test_in_process_user_errors): a process each would add 5 s of imports
# and nothing to test, since a process's one-line exit is what the cases above and tests/commands test.
PROCESS_CASES = (*ARGPARSE_CASES, "gaussian_variance_on_bernoulli")
IN_PROCESS_CASES = tuple(c for c in ERROR_CASES if c not in PROCESS_CASES)


@dataclass
class Interrupted:
    """A run interrupted after epoch 1, and what --resume made of it (if asked)."""

    returncode: int
    stderr: str
    seconds: float  # from the signal to the process's exit
    uri: str
    status: str  # the run's status right after the interruption
    failure: str | None  # and its bench.failure tag then (a resume clears it)
    resumed: subprocess.CompletedProcess[str] | None = None


@dataclass
class Results:
    root: Path
    quick: dict[str, Outcome]
    sigint: Interrupted
    sigterm: Interrupted
    reference_uri: str
    reference: Outcome


INTERRUPTED_ARGS = ["--epochs", "3", "--seed", "3", *TINY]  # the brief's --limit-train 1000 --epochs 3


def interrupted_run(folder: Path, sig: int, resume: bool, extra: list[str]) -> Interrupted:
    """Start a run, send ``sig`` once epoch 1 is done, then (optionally) --resume it to the end."""
    uri = sqlite_uri(folder)
    with open(folder / "stderr.txt", "w+") as err:
        victim = start_cli([*extra, "--tracking-uri", uri], folder, err)
        try:
            rc, seconds = interrupt_after_epoch_1(victim, sig)
        finally:
            if victim.poll() is None:
                victim.kill()
        err.seek(0)
        run = only_run(uri)
        result = Interrupted(rc, err.read(), seconds, uri, run.info.status, run.data.tags.get(FAILURE_TAG))
    if resume:
        result.resumed = timed_cli(["--resume", run.info.run_id, "--tracking-uri", uri,
                                    "--device", "cpu", "--no-progress"], folder).proc
    return result


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Results:
    """Every bench.run process of this module, two at a time (each is mostly interpreter start-up):
    the error cases, --list, a NaN run, a SIGINT-then-resume run with its uninterrupted twin, a SIGTERM run."""
    root = tmp_path_factory.mktemp("cli")
    jobs: dict[str, tuple[list[str], Path]] = {}
    for name in PROCESS_CASES:
        jobs[name] = (error_args(name, {}, root / name), root / name)
    jobs["list"] = (["--list"], root / "list")
    jobs["nan"] = (["--lr", "1e6", "--epochs", "1", *TINY, "--tracking-uri", sqlite_uri(root / "nan")], root / "nan")
    jobs["reference"] = ([*INTERRUPTED_ARGS, "--tracking-uri", sqlite_uri(root / "reference")], root / "reference")
    for name, (_, cwd) in jobs.items():
        cwd.mkdir()
        if name in ("nan", "reference"):
            copy_store(migrated_store, cwd)  # no schema migration in each process
    for name in ("sigint", "sigterm"):
        copy_store(migrated_store, root / name)
    with ThreadPoolExecutor(max_workers=2) as pool:
        # the long ones first, so that the quick ones fill the gaps
        sigint = pool.submit(interrupted_run, root / "sigint", signal.SIGINT, True, INTERRUPTED_ARGS)
        futures = {name: pool.submit(timed_cli, args, cwd) for name, (args, cwd) in
                   sorted(jobs.items(), key=lambda item: item[0] not in ("reference", "nan"))}
        sigterm = pool.submit(interrupted_run, root / "sigterm", signal.SIGTERM, False, ["--epochs", "50", *TINY])
        quick = {name: f.result() for name, f in futures.items()}
        results = Results(root, quick, sigint.result(), sigterm.result(), sqlite_uri(root / "reference"),
                          quick.pop("reference"))
    return results


def error_args(case: str, dirs: dict[str, str], folder: Path) -> list[str]:
    """The case's command line, with its bad data folder and its own store in ``folder``."""
    full = [a.format(**dirs) for a in ERROR_CASES[case][0]] + ["--epochs", "1", *TINY]
    return full if "--tracking-uri" in full else [*full, "--tracking-uri", sqlite_uri(folder)]


def assert_one_line_error(case: str, returncode: int, stdout: str, stderr: str) -> None:
    assert returncode == 2, (stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), stderr  # no usage block
    if case in ARGPARSE_CASES:
        assert lines[0].endswith(f"(see {PROG} --help)")
    for phrase in ERROR_CASES[case][1]:
        assert phrase in lines[0], (phrase, lines[0])


@pytest.mark.parametrize("case", PROCESS_CASES)
def test_user_error_exits_2_with_one_line_and_no_traceback(case: str, cli: Results) -> None:
    outcome = cli.quick[case]
    assert_one_line_error(case, outcome.proc.returncode, outcome.proc.stdout, outcome.proc.stderr)
    assert outcome.seconds < time_limit(30)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-data")
    return {"corrupt": str(corrupt_data_dir(root / "corrupt")), "missing": str(missing_data_dir(root / "missing")),
            "deflate": str(broken_deflate_dir(root / "deflate"))}


@pytest.mark.parametrize("case", IN_PROCESS_CASES)
def test_in_process_user_errors(case: str, bad_data: dict[str, str], tmp_path: Path, migrated_store: Path,
                                capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The cases that get past the light checks, through bench.run's main_guard in this process: one line, exit 2,
    and no run left behind (the data and the run id are checked before a run is made)."""
    from bench.cli import main_guard
    from bench.run import main

    unreachable = case.startswith("unreachable")
    if not unreachable:
        copy_store(migrated_store, tmp_path)
    monkeypatch.chdir(tmp_path)
    status = main_guard(main, PROG)(error_args(case, bad_data, tmp_path))
    out, err = capsys.readouterr()
    assert_one_line_error(case, status, out, err)
    if unreachable:  # nothing written into the working directory (no ./mlruns, no ./mlflow.db)
        assert list(tmp_path.iterdir()) == []
        return
    client = MlflowClient(sqlite_uri(tmp_path))
    experiments = client.search_experiments()
    assert (client.search_runs([e.experiment_id for e in experiments]) if experiments else []) == []


def test_user_errors_write_nothing_into_the_working_directory(cli: Results) -> None:
    for case in ("unknown_variant", "latent_zero", "gaussian_variance_on_bernoulli"):
        assert list((cli.root / case).iterdir()) == [], case


def test_list_prints_every_variant_with_its_description(cli: Results) -> None:
    proc = cli.quick["list"].proc
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(REGISTRY)
    for line, (name, variant) in zip(lines, REGISTRY.items(), strict=True):
        got_name, description = line.split(maxsplit=1)
        assert got_name == name and description.strip() == variant.description


def only_run(uri: str) -> Run:
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return runs[0]


def test_nan_run_fails_cleanly_and_is_marked_failed(cli: Results) -> None:
    proc = cli.quick["nan"].proc
    assert proc.returncode not in (0, 2) and proc.returncode > 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "failed" in lines[0] and "nan" in lines[0].lower(), proc.stderr
    run = only_run(sqlite_uri(cli.root / "nan"))
    assert run.info.status == "FAILED"
    reason = run.data.tags.get(FAILURE_TAG, "")
    assert "nan" in reason.lower() and "epoch 1" in reason
    assert run.info.run_id in lines[0]


class LineReader:
    """Reads a process's stdout on a thread, so the test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self.lines.put(line)
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"process ended before printing {prefix!r}: {self.seen}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line


def start_cli(args: list[str], cwd: Path, stderr: IO[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **CODE, **ONE_THREAD}
    return subprocess.Popen([sys.executable, "-m", "bench.run", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=stderr)


def interrupt_after_epoch_1(proc: subprocess.Popen[str], sig: int) -> tuple[int, float]:
    """Wait for the epoch-1 summary, send ``sig``; returns (exit status, seconds from signal to exit)."""
    reader = LineReader(proc)
    try:
        reader.wait_for("====> Epoch: 1 ", timeout=240)
    except BaseException:
        proc.kill()
        raise
    assert proc.poll() is None, "the run finished before it could be interrupted"
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return rc, time.monotonic() - t0


def final_metric(client: MlflowClient, run_id: str, name: str) -> dict[int, float]:
    history = client.get_metric_history(run_id, name)
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), f"{name} logged twice for a step: {steps}"
    return {m.step: m.value for m in history}


def assert_killed_with_checkpoint(result: Interrupted, signal_name: str) -> None:
    assert result.returncode != 0, (result.returncode, result.stderr)
    assert result.seconds < time_limit(10)  # "ends the run within seconds"
    assert "Traceback" not in result.stderr and "--resume" in result.stderr, result.stderr
    client = MlflowClient(result.uri)
    run = only_run(result.uri)
    run_id: str = run.info.run_id
    assert result.status == "KILLED"
    assert result.failure is not None and signal_name in result.failure
    assert CHECKPOINT in [f.path for f in client.list_artifacts(run_id, "checkpoint")]
    assert 1 in final_metric(client, run_id, "test_loss")  # epoch 1 was logged before the signal


def test_sigint_kills_the_run_with_a_checkpoint(cli: Results) -> None:
    assert_killed_with_checkpoint(cli.sigint, "SIGINT")


def test_sigterm_kills_the_run_with_a_checkpoint(cli: Results) -> None:
    assert_killed_with_checkpoint(cli.sigterm, "SIGTERM")


def test_resume_finishes_the_run_with_the_uninterrupted_numbers(cli: Results) -> None:
    """The issue: --resume continues the same run and ends with an uninterrupted run's numbers (1e-3 nats)."""
    assert cli.reference.proc.returncode == 0, cli.reference.proc.stderr
    resumed = cli.sigint.resumed
    assert resumed is not None and resumed.returncode == 0, resumed and resumed.stderr
    assert "Traceback" not in resumed.stderr and "resuming run" in resumed.stdout
    client, ref_client = MlflowClient(cli.sigint.uri), MlflowClient(cli.reference_uri)
    run, ref_run = only_run(cli.sigint.uri), only_run(cli.reference_uri)
    run_id, ref_id = run.info.run_id, ref_run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == ref_run.info.run_name
    for name in ("train_loss", "train_recon", "train_kld", "test_loss", "test_recon", "test_kld", "test_mse"):
        got, want = final_metric(client, run_id, name), final_metric(ref_client, ref_id, name)
        assert sorted(got) == sorted(want) == [1, 2, 3], name
        for step in (1, 2, 3):
            assert abs(got[step] - want[step]) < 1e-3, (name, step, got[step], want[step])


@pytest.mark.parametrize("command", ["run", "grid", "tune", "evaluate", "report"])
def test_argparse_errors_are_one_line_with_a_pointer_to_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13 item 9: no 11-line usage block before the error, in every command."""
    import importlib

    module = importlib.import_module(f"bench.{command}")
    with pytest.raises(SystemExit) as exited:
        module.build_parser().parse_args(["--bogus"])
    assert exited.value.code == 2
    prog = f"python -m bench.{command}"
    assert capsys.readouterr().err.splitlines() == [
        f"{prog}: error: " + ("unrecognized arguments: --bogus" if command == "report" else
                              exited_message(command)) + f" (see {prog} --help)"]


def exited_message(command: str) -> str:
    required = {"run": None, "grid": "--variants", "tune": "--variant, --trials", "evaluate": "--run-id"}[command]
    return f"the following arguments are required: {required}" if required else "unrecognized arguments: --bogus"
