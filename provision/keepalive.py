"""Dead-link detection for one SSH connection, as OpenSSH's ServerAliveInterval/CountMax does.

TCP alone notices a peer that vanished (a cut cable, a host powered off) only after its
retransmissions give up, a quarter of an hour later. So every `interval` seconds a keepalive
request that asks for a reply goes to the server (sshd answers even requests it does not know);
when no reply came for `interval * count_max` seconds, the connection is declared lost and
closed, which ends every command waiting on it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import paramiko

REQUEST = "keepalive@openssh.com"
DEFAULT_INTERVAL = 10.0
DEFAULT_COUNT_MAX = 3


class Keepalive:
    """Two daemon threads: one sends a request and waits for its reply (paramiko's
    global_request blocks until then), the other closes the transport once replies stop."""

    def __init__(self, transport: paramiko.Transport, interval: float, count_max: int,
                 on_lost: Callable[[float], None]):
        self.transport = transport
        self.interval = interval
        self.silence_limit = interval * count_max
        self.on_lost = on_lost           # called with the seconds without a reply
        self.last_reply = time.monotonic()
        self._stopped = threading.Event()

    def start(self, name: str) -> None:
        for target in (self._ping, self._watch):
            threading.Thread(target=target, daemon=True,
                             name=f"keepalive-{target.__name__[1:]}-{name}").start()

    def stop(self) -> None:
        self._stopped.set()

    def _ping(self) -> None:
        while not self._stopped.wait(self.interval) and self.transport.is_active():
            # Returns on the reply (success or failure alike), or None once the transport closes.
            self.transport.global_request(REQUEST, wait=True)
            self.last_reply = time.monotonic()

    def _watch(self) -> None:
        while True:
            silent = time.monotonic() - self.last_reply
            if self._stopped.wait(max(0.0, self.silence_limit - silent)):
                return
            if not self.transport.is_active():
                return
            silent = time.monotonic() - self.last_reply
            if silent >= self.silence_limit:
                self.on_lost(silent)
                return
