"""Process identities that another process can check: alive, dead, reused PID, another PID namespace."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

from bench.core.processes import ME, ProcessId, alive


def test_this_process_is_alive_in_both_forms() -> None:
    assert alive(ME) is True and alive(str(ME)) is True
    assert ProcessId.parse(str(ME)) == ME


def test_another_process_is_alive_until_it_ends() -> None:
    code = "from bench.core.processes import ME; print(ME, flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        other = proc.stdout.readline().strip()
        assert ProcessId.parse(other).pid == proc.pid
        assert alive(other) is True
    finally:
        proc.kill()
        proc.wait()
    assert alive(other) is False


def test_a_reused_pid_is_not_the_same_process() -> None:
    assert alive(replace(ME, start=str(int(ME.start) + 1))) is False


def test_cannot_tell_across_namespaces_machines_boots_and_old_formats() -> None:
    # A container sharing the host name but not the PID namespace: the same PID names another process there.
    assert alive(replace(ME, namespace="1")) is None
    assert alive(replace(ME, host="elsewhere")) is None
    assert alive(replace(ME, boot="00000000")) is None
    assert alive(f"{ME.host}:{ME.pid}") is None
