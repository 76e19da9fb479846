"""Who this process is, in a form another process can check: host, PID, PID namespace, start time, boot.

A host name and a PID alone are not enough: two containers may share a host name but not a PID namespace (the
same PID names different processes), and PIDs are reused. ``alive`` answers only when the other process is
certainly visible from here (same boot, same PID namespace); otherwise it says it cannot tell (None), and the
caller falls back on time (a heartbeat or a lease that expires).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int | str) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); "" when unknown."""
    stat = _read(f"/proc/{pid}/stat")
    try:
        return stat.rsplit(")", 1)[1].split()[19]
    except IndexError:
        return ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcessId:
    host: str
    pid: int
    namespace: str  # inode of the PID namespace
    start: str  # start time in ticks: tells a reused PID from the original process
    boot: str  # boot id: PIDs and ticks mean nothing across reboots

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.namespace}:{self.start}:{self.boot}"

    @classmethod
    def parse(cls, text: str) -> ProcessId | None:
        parts = text.rsplit(":", 4)
        if len(parts) != 5 or not parts[1].isdigit():
            return None  # another format (an older store's host:pid): nothing can be checked
        return cls(parts[0], int(parts[1]), parts[2], parts[3], parts[4])

    def short(self) -> str:
        """host:pid, for messages."""
        return f"{self.host}:{self.pid}"


ME = ProcessId(socket.gethostname(), os.getpid(), _pid_namespace(), _start_ticks("self"),
               _read("/proc/sys/kernel/random/boot_id")[:8])


def alive(who: str | ProcessId) -> bool | None:
    """True or False when ``who`` is a process this one can see; None when it cannot tell (another machine,
    another PID namespace or boot, an identity of another format, or no /proc)."""
    pid = ProcessId.parse(who) if isinstance(who, str) else who
    if pid is None or not ME.start or not ME.namespace:
        return None
    if (pid.host, pid.namespace, pid.boot) != (ME.host, ME.namespace, ME.boot):
        return None
    if pid.pid == ME.pid and pid.start == ME.start:
        return True
    return _start_ticks(pid.pid) == pid.start != ""
