"""Ctrl-C (or SIGTERM) during a run: the first asks the run to stop cleanly, a second one exits
at once.

The handler only sets an event: the runner's waiting thread sees it, closes every connection
(which stops the commands in flight on the hosts) and the command prints its recap. A second
signal means the user will not wait for that: the process exits on the spot, and the hosts
still stop their commands, since the connections die with it.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from provision.plan import EXIT_INTERRUPTED

STOPPING = b"\ninterrupted: stopping the commands in flight on every host " \
           b"(interrupt again to exit at once)\n"
EXITING = b"\ninterrupted again: exiting now\n"


class StopOnSignal:
    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, signum: int, frame: object) -> None:
        # os.write, not the output layer: a handler must not wait for a lock a thread holds.
        if self.event.is_set():
            os.write(2, EXITING)
            os._exit(EXIT_INTERRUPTED)
        self.event.set()
        os.write(2, STOPPING)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """While inside: SIGINT and SIGTERM set the event yielded (then exit, the second time)."""
    handler = StopOnSignal()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield handler.event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
