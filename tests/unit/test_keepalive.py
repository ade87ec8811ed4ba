"""Keepalive against transports that answer or fall silent, and the host-key refusal naming the
host by its inventory name."""

from __future__ import annotations

import threading
import time

import paramiko
import pytest

from provision.connection import _TrustOnFirstUse
from provision.errors import HostKeyMismatch
from provision.keepalive import REQUEST, Keepalive


class Transport:
    """Stands in for paramiko.Transport: answers keepalives until `silent` is set, then never
    (a cut link), as global_request does: it blocks until a reply, or until closed."""

    def __init__(self):
        self.silent = threading.Event()
        self.closed = threading.Event()
        self.requests: list[tuple[str, bool]] = []

    def is_active(self) -> bool:
        return not self.closed.is_set()

    def global_request(self, kind, data=None, wait=True):
        self.requests.append((kind, wait))
        if self.silent.is_set():
            self.closed.wait()
            return None
        return paramiko.Message()

    def close(self) -> None:
        self.closed.set()


def watch(transport, interval=0.05, count_max=3):
    lost: list[float] = []

    def on_lost(silent: float) -> None:
        lost.append(silent)
        transport.close()
    keepalive = Keepalive(transport, interval, count_max, on_lost)
    keepalive.start("h1")
    return keepalive, lost


def test_an_answering_peer_is_never_lost():
    transport = Transport()
    keepalive, lost = watch(transport)
    time.sleep(0.6)                       # 12 intervals, 4 times the silence limit
    keepalive.stop()
    assert lost == [] and transport.is_active()
    assert len(transport.requests) >= 3
    assert set(transport.requests) == {(REQUEST, True)}   # each one asks for a reply


def test_a_silent_peer_is_lost_after_count_max_intervals():
    transport = Transport()
    keepalive, lost = watch(transport)
    time.sleep(0.2)
    transport.silent.set()
    silent_since = time.monotonic()
    assert transport.closed.wait(5)
    took = time.monotonic() - silent_since
    assert len(lost) == 1 and lost[0] >= 0.15          # interval x count_max without a reply
    assert took < 2                                    # the bound is the point of keepalives


@pytest.fixture
def key():
    return paramiko.RSAKey.generate(1024)


def test_an_unknown_key_refused_by_the_strict_policy_names_the_host(tmp_path, key):
    policy = _TrustOnFirstUse(tmp_path / "known_hosts", strict=True, name="gpu07")
    with pytest.raises(HostKeyMismatch) as refused:
        policy.missing_host_key(paramiko.SSHClient(), "10.0.0.7", key)
    assert str(refused.value).startswith("gpu07 (10.0.0.7): host key ssh-rsa")


def test_a_changed_key_recorded_by_another_process_names_the_host(tmp_path, key):
    known = tmp_path / "known_hosts"
    known.write_text(f"10.0.0.7 ssh-rsa {paramiko.RSAKey.generate(1024).get_base64()}\n")
    policy = _TrustOnFirstUse(known, strict=False, name="gpu07")
    with pytest.raises(HostKeyMismatch) as refused:
        policy.missing_host_key(paramiko.SSHClient(), "10.0.0.7", key)
    assert str(refused.value).startswith("gpu07 (10.0.0.7): HOST KEY CHANGED")
