"""A lock on each host for the length of a run, so that two runs never change a host at once,
whether they come from one controller or from two.

The lock is taken in the run's first round trip on the host, which also gathers the first facts:
the command takes a flock, records who holds it, runs the facts, prints a fence line and then
sleeps holding the lock. Its channel stays open for the run; like every command it is supervised,
so it is stopped, and the lock released, when that channel closes: at the end of the run, or
when the controller dies or loses the connection. Nothing on the host outlives its controller.
"""

from __future__ import annotations

import os
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Callable

from provision.errors import ProvisionError

# Root-owned /run/lock where the user may write there (root, or a become run): a lock in /tmp
# could be a file (or symlink) another user made; /tmp for a user who cannot.
LOCK_DIR, FALLBACK_LOCK_FILE = "/run/lock", "/tmp/provision.lock"
BUSY = "provision-lock-busy"      # stderr line prefix: the lock is held, by the rest of the line
EXIT_BUSY = 75                    # the lock is held and the run does not wait


class HostLocked(ProvisionError):
    """Another run holds a host's lock, and this run does not wait for it."""


@dataclass(frozen=True)
class LockRequest:
    holder: str                               # who this run is, as a waiting run reads it
    wait: bool                                # wait for another run's lock, or fail at once
    notice: Callable[[str, str], None]        # (host, message): this run waits for another

    @classmethod
    def for_this_run(cls, wait: bool, notice: Callable[[str, str], None]) -> "LockRequest":
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        return cls(f"controller {socket.gethostname()} pid {os.getpid()} since {started}",
                   wait, notice)


def locked_script(facts: str, fence: str, request: LockRequest,
                  lock_file: str | None = None) -> str:
    """sh: take the lock (waiting for it, or exiting EXIT_BUSY), record the holder, run the
    `facts` script, print `FENCE CODE`, then hold the lock until stopped. `lock_file`: where
    (default: in /run/lock, or /tmp where the user cannot write to /run/lock)."""
    if lock_file is None:
        choose = (f"mkdir -p {LOCK_DIR} 2>/dev/null; _provision_lock={LOCK_DIR}/provision.lock\n"
                  f"[ -w {LOCK_DIR} ] || _provision_lock={FALLBACK_LOCK_FILE}\n")
    else:
        choose = f"_provision_lock={shlex.quote(lock_file)}\n"
    path = '"$_provision_lock"'
    held = (f"  printf '{BUSY} %s\\n' \"$(cat {path} 2>/dev/null)\" >&2\n"
            + ("  flock 9\n" if request.wait else f"  exit {EXIT_BUSY}\n"))
    return (choose
            + f"exec 9>>{path}\n"
            f"flock -n 9 || {{\n{held}}}\n"
            f"printf '%s\\n' {shlex.quote(request.holder)} >{path}\n"
            f"( exec 9>&-\n{facts}\n)\n"
            f"printf '\\n{fence} %d\\n' $?\n"
            # exec: the sleep itself holds fd 9, and is the process stopped with the channel.
            "exec sleep 2147483647\n")


def holder_named(stderr: str) -> str:
    """The holder a BUSY line names ('another run' when it had not recorded itself yet)."""
    for line in stderr.splitlines():
        if line.startswith(BUSY):
            return line[len(BUSY):].strip() or "another run"
    return "another run"
