"""One SSH connection per host (Fabric/paramiko): host keys, sudo, timeouts, CommandResult.

Commands are argv lists (quoted with shlex.join) or POSIX sh scripts (run as `sh -c SCRIPT`, so
the remote login shell never parses them). Every command is one exec channel on the one
connection; callers batch work into few commands because each channel costs a remote shell.
Every command runs supervised (provision.supervision): its processes are stopped on the host
when its channel closes, whether the controller closed it, died or lost the connection.

Longer than ~300 lines because host keys, keepalives, sudo and the supervision of a command
all act on the one paramiko transport that HostConnection owns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import fabric
import paramiko

from provision import keepalive
from provision.errors import HostKeyMismatch, HostUnreachable, ProvisionError, SudoRefused
from provision.inventory import Host
from provision.supervision import COMMAND_ID_VAR, marked_job, supervised_script

# paramiko logs a failed handshake's traceback from its transport thread (a port that answers
# with something other than SSH, say); with no handler, Python's last resort prints it on
# stderr. The failure itself reaches the caller as an exception, reported as UNREACHABLE.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 1800.0
SUDO_PASSWORD_ENV = "PROVISION_SUDO_PASSWORD"
EOF_GRACE = 2.0  # seconds to wait for output still in flight after the exit status
STOP_GRACE = 3.0  # seconds between TERM and KILL for a command whose channel closed


@dataclass(frozen=True)
class ConnectOptions:
    known_hosts: Path = Path("~/.ssh/known_hosts").expanduser()
    host_key_policy: str = "accept-new"      # or "strict": unknown keys are refused too
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    sudo_password: str | None = None
    keepalive_interval: float = keepalive.DEFAULT_INTERVAL
    keepalive_count_max: int = keepalive.DEFAULT_COUNT_MAX

    def for_host(self, host: Host) -> "ConnectOptions":
        """Per-host overrides from inventory vars."""
        v = host.vars
        return ConnectOptions(
            known_hosts=Path(v["ssh_known_hosts"]).expanduser() if "ssh_known_hosts" in v
            else self.known_hosts,
            host_key_policy=self.host_key_policy,
            connect_timeout=float(v.get("ssh_connect_timeout", self.connect_timeout)),
            command_timeout=float(v.get("command_timeout", self.command_timeout)),
            sudo_password=self.sudo_password,
            keepalive_interval=float(v.get("ssh_keepalive_interval", self.keepalive_interval)),
            keepalive_count_max=int(v.get("ssh_keepalive_count_max", self.keepalive_count_max)))


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    running: bool = False   # left running once it printed what RemoteProcess.wait waited for

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe_failure(self, lines: int = 5) -> str:
        if self.timed_out:
            return "timed out"
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-lines:]
        return f"exit code {self.exit_code}" + (": " + " | ".join(tail) if tail else "")


def known_host_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def _who(name: str, hostname: str) -> str:
    """The inventory name first (what the user knows the host by), then the address."""
    return hostname if name == hostname else f"{name} ({hostname})"


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Records unknown host keys (or refuses them when strict); appends under a file lock so
    many hosts connecting in parallel, even from several processes, never lose a line."""

    def __init__(self, path: Path, strict: bool, name: str):
        self.path = path
        self.strict = strict
        self.name = name      # the inventory name the key is checked for

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if self.strict:
            raise HostKeyMismatch(
                f"{_who(self.name, hostname)}: host key {key.get_name()} {key.fingerprint} "
                f"is not in {self.path} and --host-key-policy is strict; verify it and add it "
                f"(ssh-keyscan) or use --host-key-policy accept-new")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            recorded = paramiko.HostKeys()
            for line in handle.read().splitlines():
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
                if entry is not None:
                    for name in entry.hostnames:
                        recorded.add(name, entry.key.get_name(), entry.key)
            known = recorded.lookup(hostname) or {}
            old = known.get(key.get_name())
            if old is not None and old != key:
                raise _changed_key(self.name, hostname, old, key, self.path)
            if old is None:
                handle.seek(0, os.SEEK_END)
                handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _changed_key(name: str, hostname: str, old: paramiko.PKey, new: paramiko.PKey,
                 path: Path) -> HostKeyMismatch:
    return HostKeyMismatch(
        f"{_who(name, hostname)}: HOST KEY CHANGED, refusing to connect. Recorded {old.get_name()} "
        f"{old.fingerprint}, offered {new.get_name()} {new.fingerprint}. If the host was "
        f"reinstalled, remove the old key with: ssh-keygen -f {shlex.quote(str(path))} "
        f"-R {shlex.quote(hostname)}")


def as_command(command: str | list[str]) -> str:
    """The exec string: argv lists are quoted; scripts run under POSIX sh."""
    if isinstance(command, list):
        return shlex.join(command)
    return shlex.join(["sh", "-c", command])


class HostConnection:
    """A lazily opened SSH connection to one host, reused for every command of a run."""

    def __init__(self, host: Host, options: ConnectOptions):
        self.host = host
        self.options = options.for_host(host)
        self._conn: fabric.Connection | None = None
        self._lock = threading.Lock()
        self._sudo_mode: str | None = None  # "root", "nopasswd" or "password"
        self._keepalive: keepalive.Keepalive | None = None
        # Why the connection ended for good (keepalives unanswered, the run interrupted):
        # every later use raises it, and commands cut short by it report it.
        self._lost: ProvisionError | None = None

    # -- connecting -------------------------------------------------------------------------
    def open(self) -> paramiko.Transport:
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if self._conn is not None and self._conn.is_connected:
                return self._conn.transport
            h = self.host
            kwargs: dict = {}
            if h.key_file:
                kwargs["key_filename"] = os.path.expanduser(h.key_file)
            conn = fabric.Connection(
                host=h.ssh_alias or h.address, user=h.user,
                port=h.port if "port" in h.vars else None,
                connect_timeout=self.options.connect_timeout, connect_kwargs=kwargs)
            known = self.options.known_hosts
            # A ProxyJump gateway is a Connection of its own: its key is checked the same way.
            hop = conn
            while isinstance(hop, fabric.Connection):
                self._check_host_keys(hop.client, h.name if hop is conn
                                      else f"{h.name}'s jump host")
                hop = hop.gateway
            try:
                conn.open()
            except paramiko.BadHostKeyException as exc:
                raise _changed_key(h.name, exc.hostname, exc.expected_key, exc.key,
                                   known) from None
            except HostKeyMismatch:
                raise
            except paramiko.AuthenticationException as exc:
                raise HostUnreachable(
                    f"{h.name}: SSH authentication failed for user "
                    f"{conn.user!r} at {conn.host}:{conn.port}: {exc}") from None
            except paramiko.ssh_exception.NoValidConnectionsError as exc:
                reasons = {os.strerror(e.errno) if e.errno else str(e)
                           for e in exc.errors.values()}
                raise HostUnreachable(f"{h.name}: cannot connect to {conn.host}:{conn.port}: "
                                      f"{'; '.join(sorted(reasons))}") from None
            except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
                reason = str(exc) or type(exc).__name__
                raise HostUnreachable(
                    f"{h.name}: cannot connect to {conn.host}:{conn.port}: {reason}") from None
            if self._lost is not None:      # aborted while connecting
                conn.close()
                raise self._lost
            self._keepalive = keepalive.Keepalive(
                conn.transport, self.options.keepalive_interval,
                self.options.keepalive_count_max, self._keepalives_unanswered)
            self._keepalive.start(h.name)
            self._conn = conn
            return conn.transport

    def _keepalives_unanswered(self, silent: float) -> None:
        self.abort(HostUnreachable(
            f"{self.host.name}: connection lost: no reply to SSH keepalives for {silent:.0f} s "
            f"(ssh_keepalive_interval {self.options.keepalive_interval:g} s, "
            f"ssh_keepalive_count_max {self.options.keepalive_count_max})"))

    def abort(self, error: ProvisionError) -> None:
        """End the connection for good, from any thread and without waiting for the lock:
        commands running on it end (and are stopped on the host), later uses raise `error`."""
        self._lost = error
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    def lost(self) -> ProvisionError:
        """What a command whose connection died reports."""
        return self._lost or HostUnreachable(
            f"{self.host.name}: connection lost while running a command")

    def _check_host_keys(self, client: paramiko.SSHClient, name: str) -> None:
        known = self.options.known_hosts
        if known.exists():
            try:
                client.load_host_keys(str(known))
            except (OSError, paramiko.SSHException) as exc:
                raise HostUnreachable(f"{self.host.name}: cannot read {known}: {exc}") from None
        client._host_keys_filename = None  # never let paramiko rewrite the whole file
        client.set_missing_host_key_policy(
            _TrustOnFirstUse(known, self.options.host_key_policy == "strict", name))

    def close(self) -> None:
        with self._lock:
            if self._keepalive is not None:
                self._keepalive.stop()
                self._keepalive = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- running ----------------------------------------------------------------------------
    def start(self, command: str | list[str], *, sudo: bool = False,
              stdin: bytes | None = None, hold_stdin: bool = False,
              on_sent: Callable[[int, int], None] | None = None) -> "RemoteProcess":
        """Start a command; the caller reads it with RemoteProcess.wait. The channel's stdin
        stays open until the channel closes: a supervised command (the default) reads `stdin`
        and then EOF, and is stopped when the channel closes. With `hold_stdin` the command
        runs as it is, reads the held-open stdin itself and must watch it for EOF. `on_sent`
        hears (bytes of `stdin` sent, its size) as it goes (a big file's progress)."""
        size = len(stdin or b"")
        exec_line = as_command(command)
        if not hold_stdin:
            marker = f"{COMMAND_ID_VAR}={secrets.token_hex(8)}"
            text = shlex.join(command) if isinstance(command, list) else command
            exec_line = as_command(supervised_script(marked_job(marker, text), marker,
                                                     STOP_GRACE, len(stdin or b"")))
        if sudo:
            exec_line, stdin = self._with_sudo(exec_line, stdin)
        transport = self.open()
        try:
            channel = transport.open_session(timeout=self.options.connect_timeout)
            channel.exec_command(exec_line)
            if stdin:
                _send(channel, stdin, len(stdin) - size, on_sent)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if self._lost is not None:
                raise self._lost from None
            self.close()
            raise HostUnreachable(f"{self.host.name}: connection lost: {exc or 'closed'}") \
                from None
        return RemoteProcess(self.host.name, as_command(command), channel, self.lost)

    def run(self, command: str | list[str], *, sudo: bool = False, stdin: bytes | None = None,
            timeout: float | None = None,
            on_line: Callable[[str, str], None] | None = None,
            on_sent: Callable[[int, int], None] | None = None) -> CommandResult:
        process = self.start(command, sudo=sudo, stdin=stdin, on_sent=on_sent)
        return process.wait(timeout or self.options.command_timeout, on_line)

    def put(self, local: Path, remote: str) -> None:
        """Copy a file over SFTP (as the SSH user)."""
        self.open()
        try:
            with self._conn.sftp() as sftp:
                sftp.put(str(local), remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise HostUnreachable(f"{self.host.name}: copying {local} to {remote} failed: "
                                  f"{exc}") from None

    def _with_sudo(self, exec_line: str, stdin: bytes | None) -> tuple[str, bytes | None]:
        if self._sudo_mode is None:
            self._sudo_mode = self._probe_sudo()
        if self._sudo_mode == "root":
            return exec_line, stdin
        if self._sudo_mode == "nopasswd":
            return shlex.join(["sudo", "-n", "--", "sh", "-c", exec_line]), stdin
        if self.options.sudo_password is None:
            raise HostUnreachable(
                f"{self.host.name}: sudo needs a password for user {self.host.user!r}: set "
                f"{SUDO_PASSWORD_ENV} or pass --ask-become-pass")
        if self._sudo_mode != "password":
            raise SudoRefused(f"{self.host.name}: sudo refused the password for user "
                              f"{self.host.user!r} ({SUDO_PASSWORD_ENV} or --ask-become-pass)")
        # -k: never reuse a cached ticket, so sudo always reads exactly one password line
        # from stdin and the rest of stdin reaches the command untouched.
        line = shlex.join(["sudo", "-k", "-S", "-p", "", "--", "sh", "-c", exec_line])
        return line, self.options.sudo_password.encode() + b"\n" + (stdin or b"")

    def _probe_sudo(self) -> str:
        """"root", "nopasswd", "password" (accepted) or "refused". The password is tried here,
        with stdin closed after it: a command's stdin stays open, so a sudo that refused the
        password would wait there for another try, forever."""
        password = self.options.sudo_password
        probe = self.start(
            '[ "$(id -u)" = 0 ] && echo root || { sudo -n true 2>/dev/null && echo nopasswd || '
            '{ sudo -k -S -p "" true 2>/dev/null && echo password || echo refused; }; }',
            stdin=None if password is None else password.encode() + b"\n", hold_stdin=True)
        probe.channel.shutdown_write()
        return probe.wait(self.options.connect_timeout + 30).stdout.strip() or "refused"


def _alive(transport: paramiko.Transport | None) -> bool:
    if transport is None or not transport.is_active():
        return False
    try:
        transport.open_session(timeout=3).close()
        return True
    except (OSError, EOFError, paramiko.SSHException):
        return False


SEND_CHUNK = 1 << 20


def _send(channel: paramiko.Channel, data: bytes, skip: int,
          on_sent: Callable[[int, int], None] | None) -> None:
    """All of `data`, telling `on_sent` how much of it, past its first `skip` bytes (sudo's
    password), has gone."""
    if on_sent is None:
        channel.sendall(data)
        return
    for start in range(0, len(data), SEND_CHUNK):
        channel.sendall(data[start:start + SEND_CHUNK])
        on_sent(max(0, min(start + SEND_CHUNK, len(data)) - skip), len(data) - skip)


class RemoteProcess:
    """A running remote command: collects (or streams) its output until it exits."""

    def __init__(self, host: str, command: str, channel: paramiko.Channel,
                 lost: Callable[[], ProvisionError]):
        self.host = host
        self.command = command
        self.channel = channel
        self.lost = lost          # the error to raise when the connection died under it

    def wait(self, timeout: float, on_line: Callable[[str, str], None] | None = None,
             until: str | None = None) -> CommandResult:
        """The command's result once it exits. With `until`, the result as soon as stdout has
        a line `UNTIL CODE`: the output before it and that exit code, the command left
        running (its channel open) for the caller."""
        out, err = bytearray(), bytearray()
        pending = {"stdout": bytearray(), "stderr": bytearray()}
        deadline = time.monotonic() + timeout
        eof_deadline = 0.0
        chan = self.channel

        def feed(stream: str, data: bytes, sink: bytearray) -> None:
            sink += data
            if on_line is None:
                return
            buffer = pending[stream]
            buffer += data
            *lines, rest = buffer.split(b"\n")
            for line in lines:
                on_line(stream, line.decode(errors="replace"))
            pending[stream] = bytearray(rest)

        fence = until.encode() + b" " if until is not None else None
        while True:
            while chan.recv_ready():
                feed("stdout", chan.recv(65536), out)
            while chan.recv_stderr_ready():
                feed("stderr", chan.recv_stderr(65536), err)
            if fence is not None and (at := out.find(fence)) >= 0 and b"\n" in out[at:]:
                code = int(out[at + len(fence):out.index(b"\n", at)])
                return CommandResult(self.command, code, out[:at].decode(errors="replace"),
                                     err.decode(errors="replace"), running=True)
            if chan.exit_status_ready() and not chan.recv_ready() \
                    and not chan.recv_stderr_ready():
                # sshd may report the exit status before the last output: wait for its EOF,
                # but not for long, since a daemon the command started may hold stdout open.
                if chan.eof_received or chan.closed:
                    break
                eof_deadline = eof_deadline or time.monotonic() + EOF_GRACE
                if time.monotonic() > eof_deadline:
                    break
            transport = chan.get_transport()
            if transport is None or not transport.is_active():
                raise self.lost()
            left = deadline - time.monotonic()
            if left <= 0:
                chan.close()
                return CommandResult(self.command, 124, out.decode(errors="replace"),
                                     err.decode(errors="replace"), timed_out=True)
            select.select([chan], [], [], min(left, 0.05 if eof_deadline else 5.0))
        if on_line:
            for stream, rest in pending.items():
                if rest:
                    on_line(stream, rest.decode(errors="replace"))
        code = chan.recv_exit_status()
        chan.close()
        if code == -1:
            # Closed without an exit status: either the command died of a signal or the
            # connection itself died; only a fresh channel tells the two apart.
            if not _alive(chan.get_transport()):
                raise self.lost()
            code = 255
        return CommandResult(self.command, code, out.decode(errors="replace"),
                             err.decode(errors="replace"))

    def close(self) -> None:
        self.channel.close()
