"""Fault injection for bench.run and bench.evaluate: signals at random moments and concurrent processes, replayed
on tiny runs, each in its own SQLite store; then the damage is counted.

    python scripts/fault_injection.py                 # a quick pass (a few minutes on 2 cores)
    python scripts/fault_injection.py --trials 50     # 50 trials per case
    python scripts/fault_injection.py --compile       # every run with --compile: signals land in its compile too

Cases:
- ``signal``: SIGINT or SIGTERM at a uniformly random moment of a run (start-up, epochs, checkpoint writes, the
  final evaluation), then ``--resume`` until it is FINISHED.
- ``sigkill``: the same with SIGKILL (no handler runs; the dead owner's claim must not block the resume).
- ``resume_signal``: SIGINT as soon as a run is made, then SIGINT or SIGTERM within 0.2 s of its resume printing
  "resuming run": the resume must end KILLED with exit 130 (a signal it trained through is an "other" failure).
- ``resume_race``: two ``--resume`` of one killed run at the same moment.
- ``evaluate``: ``bench.evaluate`` at a random moment while the run trains.

Columns: runs left RUNNING (after a process that could record its end has ended, or after the final resume),
duplicated steps (a metric logged twice at one step), missing steps (an epoch without its metrics), resume
mismatches (a resumed run's final metrics against an uninterrupted run's with the same seed), tracebacks, and
other failures (an unexpected exit status or state). Every column but trials must be zero. Exit status 1 if not.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 2
TRAIN = ["--limit-train", "1500", "--latent", "2", "--device", "cpu", "--no-progress", "--nll-samples", "20",
         "--seed", "7"]
PER_EPOCH = ("train_loss", "train_recon", "train_kld", "test_loss", "test_recon", "test_kld", "test_mse",
             "epoch_seconds", "train_samples_per_second")
COMPARED = ("train_loss", "train_recon", "train_kld", "test_loss", "test_recon", "test_kld", "test_mse", "test_nll",
            "active_units")
COLUMNS = ("running", "duplicated", "missing", "mismatch", "traceback", "other")
# The children run this tree's code, whatever the working directory (an editable install may point elsewhere).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def start(module: str, args: list[str], folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=folder, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


class Store:
    def __init__(self, root: Path, name: str, empty: Path) -> None:
        self.folder = root / name
        self.folder.mkdir(parents=True)
        shutil.copy(empty, self.folder / "mlflow.db")
        self.uri = f"sqlite:///{self.folder / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    def runs(self) -> list:
        exps = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(exps) if exps else []

    def run(self, *args: str) -> tuple[int, str]:
        return finish(start("bench.run", [*args, "--tracking-uri", self.uri], self.folder))


# What an evaluation logs at the model's epoch: a second evaluation of a finished run logs them there again, by
# design (each K is recorded in the tag bench.nll_samples.step<N>), so they are not duplicates then.
EVALUATION = ("active_units", "test_nll", "test_nll_stderr")


def damage(store: Store, run_id: str, reference: dict[str, float] | None, epochs: int = EPOCHS,
           evaluations: int = 1) -> Counter:
    """Duplicated and missing steps of every metric of a FINISHED run, and its mismatches with the reference.
    ``evaluations``: how many evaluations the run had at its last epoch (its own, and bench.evaluate's)."""
    found: Counter = Counter()
    run = store.client.get_run(run_id)
    if run.info.status != "FINISHED":
        found["running" if run.info.status == "RUNNING" else "other"] += 1
    for name in run.data.metrics:
        steps = [m.step for m in store.client.get_metric_history(run_id, name)]
        allowed = evaluations - 1 if name in EVALUATION else 0
        found["duplicated"] += max(0, len(steps) - len(set(steps)) - allowed)
    if evaluations > 1:  # every evaluation's K is on record at that step
        found["other"] += len(run.data.tags.get(f"bench.nll_samples.step{epochs}", "").split(",")) != evaluations
        if name in PER_EPOCH:
            found["missing"] += len(set(range(1, epochs + 1)) - set(steps))
    for name in PER_EPOCH:
        if name not in run.data.metrics:
            found["missing"] += epochs
    if reference is not None:
        got = run.data.metrics
        found["mismatch"] += sum(1 for k in COMPARED if abs(got.get(k, float("nan")) - reference[k]) > 1e-4
                                 or k not in got)
    return found


def resume_to_the_end(store: Store, run_id: str, found: Counter, outputs: list[str]) -> None:
    for _ in range(3):  # a resume refused because the killed owner's claim is still being cleared: try again
        if store.client.get_run(run_id).info.status == "FINISHED":
            return
        rc, out = store.run("--resume", run_id, "--no-progress")
        outputs.append(out)
        if rc == 0:
            return
    found["other"] += 1


def signal_trial(store: Store, rng: random.Random, span: float, sigs: list[int], reference: dict[str, float]
                 ) -> Counter:
    found: Counter = Counter()
    outputs: list[str] = []
    proc = start("bench.run", [*TRAIN, "--epochs", str(EPOCHS), "--tracking-uri", store.uri], store.folder)
    time.sleep(rng.uniform(0.2, span))
    sig = rng.choice(sigs)
    if proc.poll() is None:
        proc.send_signal(sig)
    rc, out = finish(proc)
    outputs.append(out)
    runs = store.runs()
    if sig != signal.SIGKILL and rc not in (0, 128 + signal.SIGINT, 128 + sig, 130):
        found["other"] += 1
    if runs:
        (run,) = runs
        if sig != signal.SIGKILL and run.info.status == "RUNNING":
            found["running"] += 1
        resume_to_the_end(store, run.info.run_id, found, outputs)
        found += damage(store, run.info.run_id, reference)
    found["traceback"] += sum("Traceback" in o or "Exception ignored" in o for o in outputs)
    return found


def wait_for_line(proc: subprocess.Popen[str], prefix: str, outputs: list[str]) -> bool:
    assert proc.stdout is not None
    for line in proc.stdout:
        outputs.append(line)
        if line.startswith(prefix):
            return True
    return False


def resume_signal_trial(store: Store, rng: random.Random, reference: dict[str, float]) -> Counter:
    found: Counter = Counter()
    outputs: list[str] = []
    proc = start("bench.run", [*TRAIN, "--epochs", str(EPOCHS), "--tracking-uri", store.uri], store.folder)
    if wait_for_line(proc, "started run ", outputs):
        proc.send_signal(signal.SIGINT)
    rc, out = finish(proc)
    outputs.append(out)
    (run,) = store.runs()
    run_id = run.info.run_id
    proc = start("bench.run", ["--resume", run_id, "--no-progress", "--tracking-uri", store.uri], store.folder)
    if wait_for_line(proc, "resuming run ", outputs):
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM]))
    rc, out = finish(proc)
    outputs.append(out)
    found["other"] += rc != 130 or store.client.get_run(run_id).info.status != "KILLED"
    resume_to_the_end(store, run_id, found, outputs)
    found += damage(store, run_id, reference)
    found["traceback"] += sum("Traceback" in o or "Exception ignored" in o for o in outputs)
    return found


def race_trial(store: Store, rng: random.Random, span: float, reference: dict[str, float]) -> Counter:
    """Kill a run after its first epoch, then two resumes at once: one trains, the other is refused."""
    found: Counter = Counter()
    proc = start("bench.run", [*TRAIN, "--epochs", "1", "--tracking-uri", store.uri], store.folder)
    rc, out = finish(proc)
    (run,) = store.runs()
    run_id = run.info.run_id
    store.client.set_terminated(run_id, "KILLED")
    racers = [start("bench.run", ["--resume", run_id, "--epochs", str(EPOCHS), "--tracking-uri", store.uri,
                                  "--no-progress"], store.folder) for _ in range(2)]
    results = [finish(p) for p in racers]
    codes = sorted(r[0] for r in results)
    # One trains, the other is refused; or, when one started only after the other had finished, it has nothing
    # left to do.
    if codes != [0, 2] and not (codes == [0, 0] and any("nothing to do" in o for _, o in results)):
        found["other"] += 1
    found["traceback"] += sum("Traceback" in o for _, o in results)
    found += damage(store, run_id, reference)
    return found


def evaluate_trial(store: Store, rng: random.Random, span: float, reference: dict[str, float]) -> Counter:
    """bench.evaluate at a random moment of training: refused (exit 2) while the run is held, else evaluated at
    the model's epoch; the run ends FINISHED either way."""
    found: Counter = Counter()
    proc = start("bench.run", [*TRAIN, "--epochs", str(EPOCHS), "--tracking-uri", store.uri], store.folder)
    time.sleep(rng.uniform(0.2, span))
    runs = store.runs()
    outputs = []
    evaluated = False
    if runs:
        rc, out = finish(start("bench.evaluate", ["--run-id", runs[0].info.run_id, "--tracking-uri", store.uri,
                                                  "--nll-samples", "20", "--no-progress"], store.folder))
        outputs.append(out)
        evaluated = rc == 0  # the run was no longer held: it had finished, and this is a second evaluation
        if rc not in (0, 2) or (rc == 2 and "is being trained by process" not in out
                                and "has no logged model" not in out):
            found["other"] += 1
    rc, out = finish(proc)
    outputs.append(out)
    found["other"] += rc != 0
    (run,) = store.runs()
    found += damage(store, run.info.run_id, None, evaluations=1 + evaluated)  # test_nll: either evaluation
    found["traceback"] += sum("Traceback" in o for o in outputs)
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=4, help="trials per case (default 4: a quick pass)")
    p.add_argument("--jobs", type=int, default=2, help="trials run at once (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random signal times")
    p.add_argument("--keep", action="store_true", help="keep the stores (printed) for inspection")
    p.add_argument("--compile", action="store_true", help="train with --compile (resumes keep it)")
    args = p.parse_args()
    if args.compile:
        TRAIN.append("--compile")
    root = Path(tempfile.mkdtemp(prefix="vae-bench-faults-"))
    empty = root / "empty.db"
    MlflowClient(f"sqlite:///{empty}").search_experiments()  # one schema migration, copied into every store
    ref_store = Store(root, "reference", empty)
    t0 = time.monotonic()
    rc, out = ref_store.run(*TRAIN, "--epochs", str(EPOCHS))
    span = time.monotonic() - t0
    if rc != 0:
        print(out)
        return 1
    reference = ref_store.runs()[0].data.metrics
    print(f"reference run: {span:.1f} s; signals fall in [0.2, {span:.1f}] s", flush=True)
    rng = random.Random(args.seed)
    cases = {
        "signal (SIGINT/SIGTERM)": lambda s, r: signal_trial(s, r, span, [signal.SIGINT, signal.SIGTERM], reference),
        "sigkill, then resume": lambda s, r: signal_trial(s, r, span, [signal.SIGKILL], reference),
        "signal as a resume begins": lambda s, r: resume_signal_trial(s, r, reference),
        "two resumes at once": lambda s, r: race_trial(s, r, span, reference),
        "evaluate while training": lambda s, r: evaluate_trial(s, r, span, reference),
    }
    jobs = [(case, i, random.Random(rng.random())) for i in range(args.trials) for case in cases]
    totals = {case: Counter() for case in cases}

    def one(job: tuple[str, int, random.Random]) -> tuple[str, Counter]:
        case, i, r = job
        store = Store(root, f"{list(cases).index(case)}-{case.split()[0]}-{i}", empty)
        return case, cases[case](store, r)

    with ThreadPoolExecutor(args.jobs) as pool:
        for case, found in pool.map(one, jobs):
            totals[case] += found
            totals[case]["trials"] += 1
            print(f"  {case}: {dict(found) or 'clean'}", flush=True)
    header = ("case", "trials", "runs left RUNNING", "duplicated steps", "missing steps", "resume mismatches",
              "tracebacks", "other failures")
    print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for case, c in totals.items():
        print(f"| {case} | {c['trials']} | " + " | ".join(str(c[k]) for k in COLUMNS) + " |")
    print(f"\n{time.monotonic() - t0:.0f} s; stores in {root}" if args.keep else "")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return int(any(c[k] for c in totals.values() for k in COLUMNS))


if __name__ == "__main__":
    sys.exit(main())
