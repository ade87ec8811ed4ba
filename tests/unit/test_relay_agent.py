"""provision/relay/agent.py for real on this machine: `serve` and `fetch` as separate processes
over loopback addresses (127.0.0.1 holds, 127.0.0.2 receives), stdin held as the controller
holds it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.relay.scripts import AGENT

HOLDER, RECEIVER, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
TOKEN = b"0123456789abcdef0123456789abcdef"


class Agent:
    def __init__(self, *args: str, token: bytes = TOKEN):
        self.process = subprocess.Popen([sys.executable, "-I", "-S", "-c", AGENT, *args],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.process.stdin.write(token + b"\n")
        self.process.stdin.flush()

    def message(self) -> dict:
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read().decode()
        return json.loads(line)

    def end(self) -> int:
        """Close stdin, as the relay does at the end of the run."""
        self.process.stdin.close()
        return self.process.wait(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOLDER, 0))
        return probe.getsockname()[1]


@pytest.fixture
def payload(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "holder" / "file.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3 << 20))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def copy_path(tmp_path: Path) -> Path:
    return tmp_path / "receiver" / ".provision-relay" / "file.bin"


def nothing_comes(peer: socket.socket) -> bool:
    """The holder closed on the peer without sending a byte."""
    try:
        return peer.recv(16) == b""
    except ConnectionResetError:      # closed with the peer's token unread
        return True


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOLDER, port)) == 0


def test_a_copy_passes_checked_is_kept_while_stdin_is_open_and_goes_with_it(tmp_path, payload):
    source, sha256 = payload
    port = free_port()
    serve = Agent("serve", str(source), HOLDER, RECEIVER, f"{port},{port + 1}")
    assert serve.message() == {"port": port}
    target = copy_path(tmp_path)
    fetch = Agent("fetch", HOLDER, str(port), RECEIVER, sha256, str(target))
    assert fetch.message() == {"ok": source.stat().st_size}
    assert serve.message() == {"sent": source.stat().st_size}
    assert serve.end() == 0
    assert not listening(port)
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.parent.stat().st_mode & 0o777 == 0o700
    assert target.parent.parent.stat().st_mode & 0o777 == 0o755 & ~current_umask()
    assert fetch.end() == 0
    assert not target.parent.exists() and target.parent.parent.exists()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_only_the_peer_with_the_token_gets_the_file(tmp_path, payload):
    source, sha256 = payload
    port = free_port()
    serve = Agent("serve", str(source), HOLDER, RECEIVER, str(port))
    serve.message()
    for address, token in ((STRANGER, TOKEN), (RECEIVER, b"f" * 32)):
        with socket.create_connection((HOLDER, port), 5, source_address=(address, 0)) as peer:
            peer.sendall(token + b"\n")
            assert nothing_comes(peer)
    target = copy_path(tmp_path)
    fetch = Agent("fetch", HOLDER, str(port), RECEIVER, sha256, str(target))
    assert "ok" in fetch.message()
    assert serve.message()["sent"] == source.stat().st_size
    fetch.end()


def test_a_wrong_copy_is_refused_and_nothing_stays(tmp_path, payload):
    source, _ = payload
    port = free_port()
    serve = Agent("serve", str(source), HOLDER, RECEIVER, str(port))
    serve.message()
    target = copy_path(tmp_path)
    fetch = Agent("fetch", HOLDER, str(port), RECEIVER, "0" * 64, str(target))
    answer = fetch.message()
    assert answer["where"] == "checksum" and "expected " + "0" * 64 in answer["error"]
    assert fetch.process.wait(10) == 1
    assert not target.exists() and list(target.parent.iterdir()) == []
    serve.end()


def test_no_holder_fails_fast_as_a_connect_problem(tmp_path, payload):
    _, sha256 = payload
    start = time.monotonic()
    fetch = Agent("fetch", HOLDER, str(free_port()), RECEIVER, sha256, str(copy_path(tmp_path)))
    assert fetch.message()["where"] == "connect"
    assert time.monotonic() - start < 5


def test_an_address_not_ours_is_a_local_problem(tmp_path, payload):
    _, sha256 = payload
    fetch = Agent("fetch", HOLDER, str(free_port()), "10.255.255.254", sha256,
                  str(copy_path(tmp_path)))
    assert fetch.message()["where"] == "local"


def test_a_busy_port_moves_the_server_to_the_next(payload):
    source, _ = payload
    busy, spare = free_port(), free_port()
    with socket.socket() as taken:
        taken.bind((HOLDER, busy))
        taken.listen()
        serve = Agent("serve", str(source), HOLDER, RECEIVER, f"{busy},{spare}")
        assert serve.message() == {"port": spare}
        assert serve.end() == 0
    assert not listening(spare)


def test_the_server_gives_up_when_stdin_closes(payload):
    source, _ = payload
    port = free_port()
    serve = Agent("serve", str(source), HOLDER, RECEIVER, str(port))
    serve.message()
    assert serve.end() == 0
    assert not listening(port)


def test_a_keeper_stopped_by_a_signal_removes_its_copy(tmp_path, payload):
    source, sha256 = payload
    port = free_port()
    serve = Agent("serve", str(source), HOLDER, RECEIVER, str(port))
    serve.message()
    target = copy_path(tmp_path)
    fetch = Agent("fetch", HOLDER, str(port), RECEIVER, sha256, str(target))
    fetch.message()
    assert target.exists()
    fetch.process.send_signal(signal.SIGTERM)
    fetch.process.wait(10)
    assert not target.exists()
    serve.end()


def test_a_part_nobody_writes_goes_and_one_being_written_stays(tmp_path, payload):
    source, sha256 = payload
    target = copy_path(tmp_path)
    target.parent.mkdir(parents=True)
    stale = target.parent / "other.part-12345"         # an interrupted transfer's
    stale.write_bytes(b"half")
    live = target.parent / "other.part-12346"          # another run's, in progress
    with open(live, "wb") as writing:
        fcntl.flock(writing, fcntl.LOCK_EX)
        writing.write(b"half")
        writing.flush()
        port = free_port()
        serve = Agent("serve", str(source), HOLDER, RECEIVER, str(port))
        serve.message()
        fetch = Agent("fetch", HOLDER, str(port), RECEIVER, sha256, str(target))
        assert "ok" in fetch.message()
        serve.end()
        assert not stale.exists() and live.read_bytes() == b"half"
        fetch.end()
