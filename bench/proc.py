"""Small helpers: run a command and time it; find a job's processes from this machine.

Every lab host's processes are also processes of this machine (its PID namespace is a child
of ours), so a scan of our /proc sees the processes of every node at once, without SSH.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Timed:
    seconds: float
    returncode: int
    stdout: str
    stderr: str


def timed(argv: list[str], timeout: float = 900, env: dict | None = None,
          cwd: str | None = None) -> Timed:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          check=False)
    return Timed(time.monotonic() - start, done.returncode, done.stdout, done.stderr)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def processes_with_env(name: str, value: str) -> dict[int, tuple[list[str], dict[str, str]]]:
    """pid -> (argv, environ) of every live process whose environment has name=value."""
    needle = f"{name}={value}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        environ = _read(f"/proc/{entry}/environ")
        if needle not in environ.split(b"\0"):
            continue
        stat = _read(f"/proc/{entry}/stat")
        if b") Z" in stat:      # a zombie is gone already; its parent has yet to reap it
            continue
        argv = [a.decode(errors="replace") for a in _read(f"/proc/{entry}/cmdline").split(b"\0")
                if a]
        env = dict(item.decode(errors="replace").split("=", 1)
                   for item in environ.split(b"\0") if b"=" in item)
        found[int(entry)] = (argv, env)
    return found


def wait_until_none(name: str, value: str, since: float, timeout: float,
                    poll: float = 0.02) -> float | None:
    """Seconds from `since` (time.monotonic()) until no process has name=value in its
    environment; None when some are still there after `timeout` seconds."""
    while time.monotonic() - since < timeout:
        if not processes_with_env(name, value):
            return time.monotonic() - since
        time.sleep(poll)
    return None
