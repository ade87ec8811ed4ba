"""Ctrl-C during a run: the signal handler, and the runner stopping its hosts on request.

BlockingConnection stands in for the SSH connection only: its commands run until the runner
ends the connection (abort), as a long remote command does until its channel closes.
"""

from __future__ import annotations

import threading

import pytest

import provision.runner
from provision.cli import interrupt
from provision.connection import CommandResult, ConnectOptions
from provision.inventory import Host
from provision.plan import EXIT_INTERRUPTED, Status, TaskResult, exit_code
from provision.runner import run_on_hosts
from provision.session import HostSession


def test_first_signal_asks_to_stop_and_the_second_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(interrupt.os, "_exit", exits.append)
    monkeypatch.setattr(interrupt.os, "write", lambda fd, data: len(data))
    handler = interrupt.StopOnSignal()

    handler(2, None)
    assert handler.event.is_set() and exits == []
    handler(15, None)
    assert exits == [EXIT_INTERRUPTED]


class BlockingConnection:
    """Stands in for connection.HostConnection: a command runs until the connection ends."""
    started = threading.Semaphore(0)

    def __init__(self, host, options):
        self.host = host
        self.options = options
        self.lost: Exception | None = None
        self.ended = threading.Event()

    def run(self, command, **kwargs) -> CommandResult:
        if self.lost is not None:
            raise self.lost
        BlockingConnection.started.release()
        self.ended.wait(30)
        raise self.lost or AssertionError("never aborted")

    def abort(self, error) -> None:
        self.lost = error
        self.ended.set()

    def close(self) -> None:
        pass


def test_a_stop_request_interrupts_the_hosts_running_and_those_not_started(monkeypatch):
    monkeypatch.setattr(provision.runner, "HostConnection", BlockingConnection)
    BlockingConnection.started = threading.Semaphore(0)
    hosts = [Host(f"h{i}", f"10.9.0.{i}") for i in range(1, 5)]
    stop = threading.Event()
    checks = []

    def work(session: HostSession, results: list[TaskResult]) -> None:
        session.current = ("slow", "long step")
        session.run("sleep 3600")

    def press_ctrl_c() -> None:
        for _ in range(2):            # --forks 2: two hosts start, two wait their turn
            assert BlockingConnection.started.acquire(timeout=10)
        stop.set()

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    results = run_on_hosts(hosts, ConnectOptions(), 2, work,
                           lambda sessions, by_host: checks.append(sessions), stop=stop)
    presser.join()

    assert [r.status for r in results] == [Status.INTERRUPTED] * 4
    assert sorted(r.interrupted for r in results) == \
        ["before it started"] * 2 + ["during [slow] long step"] * 2
    assert checks == []                      # no cross-host check after an interrupt
    assert exit_code(results) == EXIT_INTERRUPTED


def test_hosts_done_before_the_stop_keep_their_results(monkeypatch):
    monkeypatch.setattr(provision.runner, "HostConnection", BlockingConnection)
    hosts = [Host("fast", "10.9.0.1"), Host("slow", "10.9.0.2")]
    stop = threading.Event()

    def work(session: HostSession, results: list[TaskResult]) -> None:
        name = session.connection.host.name
        if name == "fast":
            results.append(TaskResult(name, "r", "t", Status.OK, "fine"))
            return
        threading.Timer(0.3, stop.set).start()
        session.run("sleep 3600")

    results = run_on_hosts(hosts, ConnectOptions(), 2, work, stop=stop)

    assert [r.status for r in results] == [Status.OK, Status.INTERRUPTED]
    assert results[1].interrupted == "before its first task"


@pytest.mark.parametrize("statuses, code", [
    ([Status.OK, Status.INTERRUPTED], EXIT_INTERRUPTED),
    ([Status.FAILED, Status.INTERRUPTED], EXIT_INTERRUPTED)])
def test_an_interrupted_run_exits_130_whatever_else_happened(statuses, code):
    from provision.plan import HostResult
    results = []
    for i, status in enumerate(statuses):
        result = HostResult(f"h{i}")
        if status is Status.INTERRUPTED:
            result.interrupted = "during [r] t"
        else:
            result.tasks.append(TaskResult(result.host, "r", "t", status, ""))
        results.append(result)
    assert exit_code(results) == code
    assert results[-1].as_dict()["status"] == "interrupted"
    assert results[-1].as_dict()["counts"]["interrupted"] == 1
