"""Finding and stopping the lab's processes through the machine's /proc.

Every read may race the process's exit, so each one tolerates a vanished process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator


def pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def is_namespace_init(pid: int) -> bool:
    """True for the PID 1 of a PID namespace below the machine's (NSpid: <machine pid> ... 1)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    chain = line.split()[1:]
                    return len(chain) > 1 and chain[-1] == "1"
    except OSError:
        pass
    return False


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def comm_and_parent(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may itself hold spaces and parentheses.
    comm = text[text.index("(") + 1:text.rindex(")")]
    return comm, int(text[text.rindex(")") + 2:].split()[1])


def in_namespace_of(init_pid: int, names: Iterable[str]) -> list[int]:
    """Processes named one of `names` in the PID namespace whose init is `init_pid`."""
    namespace, wanted = pid_namespace(init_pid), set(names)
    if namespace is None:
        return []
    found = []
    for pid in pids():
        info = comm_and_parent(pid)
        if info and info[0] in wanted and pid_namespace(pid) == namespace:
            found.append(pid)
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def signal_all(targets: Iterable[int], signum: int) -> None:
    for pid in targets:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def wait_gone(targets: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `targets` runs; return those still running at the deadline."""
    remaining = list(targets)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = [pid for pid in remaining if alive(pid)]
    return remaining


def stop(targets: Iterable[int], grace: float) -> list[int]:
    """TERM, then KILL what is left after `grace` seconds; return what even KILL did not end."""
    targets = list(targets)
    signal_all(targets, signal.SIGTERM)
    left = wait_gone(targets, grace)
    signal_all(left, signal.SIGKILL)
    return wait_gone(left, 5)
