"""One owner per run: a run is trained, resumed or evaluated by one process at a time.

Why a lease in the run's tags, and how two claimants cannot both win:
- A file lock beside the database would hold only for processes on one machine and a SQLite store; runs also
  live behind an ``mlflow server`` or in PostgreSQL, reached from many machines. The run's tags are in the
  store every one of them reads, so the claim goes there.
- MLflow params are set-once (a compare-and-set) but immutable and visible as settings: one param per claim
  would pile up in every run and split the report's configurations. Tags can be deleted.
- Tags are last-writer-wins, so one shared "owner" tag cannot arbitrate: two processes that both read "free"
  and both write would both believe they won. Instead each claimant writes a tag of its own
  (``bench.owner.<token>``, a key no one else writes), then re-reads the run's tags. It takes the run only if no
  other live claim is there; otherwise it withdraws its own. Of two racing claimants the later writer always
  sees the earlier one's tag (the store applies writes in order and each reads after its own write), so at
  most one wins; when both see each other both withdraw, and retry after a random pause.
- A claim is live while its process is: ``bench.core.processes.alive`` answers for a process on this machine
  and PID namespace (a dead owner's claim is cleared at once); where it cannot tell (another machine or
  container), the claim lives while its heartbeat, rewritten every HEARTBEAT seconds by a thread, is younger
  than EXPIRY seconds. A holder that finds its own claim gone (it was silent for longer than that, e.g.
  suspended) stops at once without writing anything more.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import RunTag

from bench.core.processes import ME, ProcessId, alive
from bench.errors import UserError
from bench.tracking.names import OWNER_TAG

HEARTBEAT = 10.0  # seconds between a holder's heartbeats
EXPIRY = 60.0  # a claim whose process cannot be checked from here lives this long after its last heartbeat
RETRIES = 5  # attempts when claimants collide, before reporting the run as busy
PREFIX = OWNER_TAG.format("")
PASSIVE = {"training": "trained", "evaluating": "evaluated"}


@dataclass(frozen=True)
class Claim:
    token: str
    by: str  # bench.core.processes identity
    what: str  # "training", "evaluating"
    since: float
    beat: float
    held: bool  # False while the claimant is still checking for rivals

    def to_tag(self) -> str:
        return json.dumps({"by": self.by, "what": self.what, "since": self.since, "beat": self.beat,
                           "held": self.held})

    @classmethod
    def from_tag(cls, key: str, value: str) -> Claim:
        try:
            d = json.loads(value)
            return cls(key[len(PREFIX):], str(d["by"]), str(d["what"]), float(d["since"]), float(d["beat"]),
                       bool(d["held"]))
        except (ValueError, KeyError, TypeError):
            return cls(key[len(PREFIX):], value, "using", 0.0, 0.0, True)  # unreadable: lives until it expires

    def live(self, now: float) -> bool:
        known = alive(self.by)
        return known if known is not None else now - self.beat < EXPIRY

    def describe(self, now: float) -> str:
        """E.g. "trained by process vm:4242 since 2026-12-01 10:23:41 (last heard 3 s ago)"."""
        pid = ProcessId.parse(self.by)
        who = pid.short() if pid else self.by
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        state = "" if self.held else ", still claiming it"
        return (f"{PASSIVE.get(self.what, self.what)} by process {who} since {since} "
                f"(last heard {max(0.0, now - self.beat):.0f} s ago{state})")


def claims(client: MlflowClient, run_id: str) -> list[Claim]:
    tags = client.get_run(run_id).data.tags
    return [Claim.from_tag(k, v) for k, v in tags.items() if k.startswith(PREFIX)]


class Busy(UserError):
    """Another live process holds the run."""


class Lease:
    """This process's claim on one run; ``release()`` (or the end of a ``with`` block) gives it up."""

    def __init__(self, client: MlflowClient, run_id: str, what: str) -> None:
        self.client, self.run_id, self.what = client, run_id, what
        self.token = secrets.token_hex(8)
        self.since = time.time()
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return OWNER_TAG.format(self.token)

    def claim_tag(self, held: bool) -> dict[str, str]:
        return {self.key: Claim(self.token, str(ME), self.what, self.since, time.time(), held).to_tag()}

    def _write(self, held: bool) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.claim_tag(held).items()])

    def _delete(self, token: str) -> None:
        with contextlib.suppress(Exception):  # gone already: another claimant cleared it too
            self.client.delete_tag(self.run_id, OWNER_TAG.format(token))

    def try_claim(self) -> Claim | None:
        """One attempt: None when the run is ours now, else the rival claim that stopped us."""
        self._write(held=False)
        now = time.time()
        rivals = []
        for c in claims(self.client, self.run_id):
            if c.token == self.token:
                continue
            if c.live(now):
                rivals.append(c)
            else:
                self._delete(c.token)  # a dead process's claim, or one silent for longer than EXPIRY
        if rivals:
            self._delete(self.token)
            return max(rivals, key=lambda c: (c.held, -c.since))
        self._write(held=True)
        self.held = True
        self._start_heartbeat()
        return None

    def claim(self, wait: bool = False, say: Callable[[str], None] = print, poll: float = 2.0) -> Lease:
        """Take the run, or raise Busy naming its owner; with ``wait``, wait until it is free."""
        said = False
        attempts = 0
        while True:
            rival = self.try_claim()
            if rival is None:
                return self
            attempts += 1
            now = time.time()
            if not rival.held and attempts < RETRIES:  # a claimant racing us: both withdrew, try again
                time.sleep(random.uniform(0.05, 0.5))
                continue
            if not wait:
                raise Busy(f"run {self.run_id} is being {rival.describe(now)}; give --wait to wait until it is free")
            if not said:
                say(f"waiting for run {self.run_id}, which is being {rival.describe(now)}")
                said = True
            time.sleep(random.uniform(0.5 * poll, 1.5 * poll))
            attempts = 0

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="bench-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                mine = [c for c in claims(self.client, self.run_id) if c.token == self.token]
                if self._stop.is_set():
                    return
                if not mine:
                    # Taken over while we were silent: whatever we wrote next could contradict the new owner.
                    os.write(2, f"\nlost the claim on run {self.run_id} (silent for more than {EXPIRY:.0f} s, "
                                "and another process took it over); stopping without writing more\n".encode())
                    sys.stdout.flush()
                    os._exit(3)
                self._write(held=True)
            except Exception:  # noqa: BLE001, S112 - the store may blink; the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            self._delete(self.token)
            self.held = False

    def born(self, run_id: str) -> Lease:
        """Held from birth: for a run created with ``claim_tag(held=True)`` among its tags (no one can race for a
        run that does not exist yet)."""
        self.run_id, self.held = run_id, True
        self._start_heartbeat()
        return self

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
