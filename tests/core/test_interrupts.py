"""bench.core.interrupts with real signals sent to this process: a KeyboardInterrupt that something swallows
(a library's bare ``except:``, a ``__del__`` the signal landed in) is raised again where the work goes on."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from bench.core import interrupts
from bench.core.config import TrainConfig
from bench.core.data import MNIST
from bench.tracking.tracker import MemoryTracker
from bench.training.loop import train
from variants.registry import get_variant


@pytest.fixture
def handlers() -> Iterator[None]:
    """The module's state and this process's SIGINT/SIGTERM handlers as they were, after the test."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")
    state = dict(interrupts._state)
    old = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    yield
    interrupts._state.clear()
    interrupts._state.update(state)
    for s, h in old.items():
        signal.signal(s, h)


def land(signum: int) -> None:
    """Send ``signum`` to this process and give the interpreter a few bytecodes in which to run its handler."""
    os.kill(os.getpid(), signum)
    for _ in range(100):
        time.sleep(0.001)


def swallow(signum: int) -> None:
    """What a bare ``except:`` in a library does to the KeyboardInterrupt raised while it runs."""
    with contextlib.suppress(BaseException):  # the defect being simulated
        land(signum)


class Dropper:
    """An object whose ``__del__`` takes the signal: the interpreter prints the exception and drops it."""

    def __del__(self) -> None:
        land(signal.SIGINT)


def test_a_swallowed_signal_is_raised_again_by_check(handlers: None) -> None:
    with interrupts.graceful_interrupts():
        interrupts.check()  # nothing acted on yet: a no-op
        swallow(signal.SIGTERM)
        assert interrupts.phase() == interrupts.ENDING  # a second signal would now be dropped ...
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            interrupts.check()  # ... but the first is not lost


def test_a_signal_dropped_in_a_finalizer_is_raised_again(handlers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ignored: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(u.exc_value))
    with interrupts.graceful_interrupts():
        Dropper()
        gc.collect()
        assert [type(e) for e in ignored] == [KeyboardInterrupt]  # the interpreter did drop it
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            interrupts.check()


def test_a_signal_swallowed_before_a_graceful_block_stops_it_at_the_start(handlers: None) -> None:
    ran = []
    with interrupts.graceful_interrupts():
        swallow(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), interrupts.graceful_interrupts():
        ran.append(True)
    assert not ran


def test_training_stops_at_its_first_batch_after_a_swallowed_signal(handlers: None, mnist: MNIST) -> None:
    cfg = TrainConfig(latent=2, epochs=2, limit_train=512, device="cpu", seed=1)
    with interrupts.graceful_interrupts():
        swallow(signal.SIGINT)
        tracker = MemoryTracker()
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            train(get_variant("sgvb_b"), cfg, mnist, tracker, log=lambda _: None)
    assert not tracker.metrics  # not one epoch logged


def test_a_new_command_starts_with_no_signal_on_record(handlers: None) -> None:
    with interrupts.graceful_interrupts():
        swallow(signal.SIGTERM)
    interrupts.install("interrupted")
    interrupts.set_phase(interrupts.OWNING)
    interrupts.check()
