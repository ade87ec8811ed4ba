"""A remote command the relay talks to while it runs: JSON lines from its stdout, stdin held
open until the relay is done with it (its end is the command's signal to finish)."""

from __future__ import annotations

import json
import select
import time

import paramiko

from provision.connection import RemoteProcess

CHANNEL_ERRORS = (OSError, EOFError, paramiko.SSHException)


class Live:
    def __init__(self, process: RemoteProcess):
        self.channel = process.channel
        self._stdout = b""
        self._stderr = b""

    def message(self, timeout: float) -> dict | None:
        """The command's next stdout line as JSON; None when it ended, its connection died or
        `timeout` passed first."""
        deadline = time.monotonic() + timeout
        chan = self.channel
        try:
            while b"\n" not in self._stdout:
                self._drain_stderr()
                if chan.recv_ready():
                    self._stdout += chan.recv(65536)
                    continue
                transport = chan.get_transport()
                if chan.eof_received or chan.closed or transport is None \
                        or not transport.is_active():
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                select.select([chan], [], [], min(left, 1.0))
        except CHANNEL_ERRORS:
            return None
        line, _, self._stdout = self._stdout.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        return message if isinstance(message, dict) else {
            "error": line.decode(errors="replace").strip(), "where": "local"}

    def problem(self, message: dict | None = None) -> str:
        """What went wrong, in one line: the command's error, else its stderr and exit code."""
        if message and message.get("error"):
            return str(message["error"])
        self._drain_stderr()
        tail = " | ".join(self._stderr.decode(errors="replace").strip().splitlines()[-3:])
        code = self.channel.exit_status if self.channel.exit_status_ready() else None
        what = "its connection was lost" if code is None or code == -1 else f"exit code {code}"
        return what + (f": {tail}" if tail else "")

    def finish(self, timeout: float) -> None:
        """Close its stdin (it then finishes: a keeper removes its copy) and wait for its end."""
        try:
            self.channel.shutdown_write()
            deadline = time.monotonic() + timeout
            while not self.channel.exit_status_ready() and time.monotonic() < deadline:
                self._drain_stderr()
                while self.channel.recv_ready():
                    self.channel.recv(65536)
                select.select([self.channel], [], [], 0.2)
        except CHANNEL_ERRORS:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.channel.close()
        except CHANNEL_ERRORS:
            pass

    def _drain_stderr(self) -> None:
        while self.channel.recv_stderr_ready():
            self._stderr = (self._stderr + self.channel.recv_stderr(65536))[-4096:]
