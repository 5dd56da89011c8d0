"""Small process and port helpers (Linux)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (all sockets are held until every port is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def proc_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces; fields after the closing paren are space separated.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # zombie: as good as gone
        return None
    return int(fields[19])


@dataclass
class ProcInfo:
    name: str
    pid: int
    start_time: int
    argv: list[str]
    log: str

    def alive(self) -> bool:
        """True if this very process (same pid AND start time) is still running."""
        return proc_start_time(self.pid) == self.start_time

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcInfo:
        return cls(**data)


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> tuple[subprocess.Popen[bytes], ProcInfo]:
    """Start ``argv`` detached from the terminal, logging to ``log_path``.

    With ``die_with_parent`` the child gets SIGTERM when the calling thread's process dies
    (used by the pytest fixture so a killed test run leaves nothing behind).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_set_pdeathsig if die_with_parent else None,
        )
    start = proc_start_time(proc.pid)
    info = ProcInfo(name, proc.pid, start if start is not None else -1, argv, str(log_path))
    return proc, info


def terminate(
    infos: list[ProcInfo],
    popens: dict[int, subprocess.Popen[bytes]] | None = None,
    timeout: float = 10.0,
) -> list[str]:
    """SIGTERM then (after ``timeout``) SIGKILL each live process; returns names still alive."""
    popens = popens or {}
    live = [p for p in infos if p.alive()]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in live:
            if p.pid in popens:
                popens[p.pid].poll()  # reap our own children
        live = [p for p in live if p.alive()]
        if not live:
            break
        time.sleep(0.1)
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for p in live:
            if p.pid in popens:
                popens[p.pid].poll()
        live = [p for p in live if p.alive()]
        if not live:
            break
        time.sleep(0.05)
    for pop in popens.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            pop.wait(timeout=0.5)
    return [p.name for p in live]


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (VmRSS), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
