"""The detached-run supervisor (provision/train/supervisor.py) as real processes on this machine:
two or three supervisors on 127.0.0.1, jobs that are small sh scripts carrying a marker, short
heartbeat deadlines. Each node's job gets a marker of its own here (on real nodes they share
the run's), because every "node" of these tests shares this machine's /proc."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provision.train.config import RUN_ID_VAR
from provision.train.detached import SUPERVISOR
from provision.train.processes import stop_script
from provision.train.run_records import NodeRecord, merge

GRACE = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """N supervisors of one run, node rank = index, master rank 0, in tmp dirs."""

    def __init__(self, tmp_path: Path, jobs: list[str], **timing):
        self.run_id = f"t{os.getpid()}-{time.monotonic_ns()}"
        self.port = free_port()
        self.dirs = []
        for rank, job in enumerate(jobs):
            directory = tmp_path / f"node{rank}"
            directory.mkdir()
            marker = self.marker(rank)
            spec = {
                "run_id": self.run_id, "token": "secret", "host": f"n{rank}", "rank": rank,
                "master_rank": 0, "nodes": [{"host": f"n{r}", "rank": r}
                                            for r in range(len(jobs))],
                "coordination": ["127.0.0.1", self.port], "argv": ["sh", "-c", job],
                "env": {RUN_ID_VAR: marker}, "cwd": str(directory),
                "stop_script": stop_script(marker, GRACE), "drop_env": [RUN_ID_VAR],
                "heartbeat": 0.2, "deadline": 1.5, "join_timeout": 5.0,
                "log_max_bytes": 1 << 20, "command": ["provision", "train"],
                "inventory_sha256": "0" * 64, "script": "job.sh", "master": "127.0.0.1:1",
                **timing}
            (directory / "spec.json").write_text(json.dumps(spec))
            (directory / "supervisor.py").write_text(SUPERVISOR.read_text())
            self.dirs.append(directory)

    def marker(self, rank: int) -> str:
        return f"{self.run_id}-n{rank}"

    def start(self, ranks=None) -> dict[int, dict]:
        """Start the supervisors at once; what each `start` printed."""
        answers: dict[int, dict] = {}

        def one(rank: int) -> None:
            directory = self.dirs[rank]
            done = subprocess.run([sys.executable, "-I", "-S", str(directory / "supervisor.py"),
                                   "start", str(directory)],
                                  capture_output=True, text=True, timeout=30)
            answers[rank] = json.loads(done.stdout.strip().splitlines()[-1])
        threads = [threading.Thread(target=one, args=(r,))
                   for r in (ranks if ranks is not None else range(len(self.dirs)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return answers

    def record(self, rank: int) -> dict:
        return json.loads((self.dirs[rank] / "record.json").read_text())

    def pid(self, rank: int) -> int:
        return int((self.dirs[rank] / "supervisor.pid").read_text())

    def supervisor_alive(self, rank: int) -> bool:
        try:
            return str(self.dirs[rank]) in Path(f"/proc/{self.pid(rank)}/cmdline").read_text()
        except OSError:
            return False

    def wait_ended(self, timeout: float) -> float:
        """Seconds until every supervisor has exited."""
        began = time.monotonic()
        while any(self.supervisor_alive(r) for r in range(len(self.dirs))):
            if time.monotonic() - began > timeout:
                states = [self.record(r)["state"] for r in range(len(self.dirs))]
                raise AssertionError(f"the supervisors did not end: {states}")
            time.sleep(0.05)
        return time.monotonic() - began

    def log(self, rank: int) -> str:
        return (self.dirs[rank] / "output.log").read_text()

    def view(self):
        return merge([NodeRecord(self.record(r), self.supervisor_alive(r))
                      for r in range(len(self.dirs))])

    def kill(self) -> None:
        for rank in range(len(self.dirs)):
            if (self.dirs[rank] / "supervisor.pid").exists() and self.supervisor_alive(rank):
                os.kill(self.pid(rank), signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path, marked_pids):
    made = []

    def make(jobs: list[str], **timing) -> Cluster:
        made.append(Cluster(tmp_path, jobs, **timing))
        return made[-1]
    yield make
    for each in made:
        each.kill()
        deadline = time.monotonic() + 5
        while any(marked_pids(each.marker(r)) for r in range(len(each.dirs))) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(marked_pids(each.marker(r)) for r in range(len(each.dirs)))


def wait_for_pids(marked_pids, marker: str, timeout: float = 10) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pids := marked_pids(marker):
            return pids
        time.sleep(0.05)
    raise AssertionError(f"no process of {marker} started")


def test_a_run_that_succeeds_is_recorded_on_every_node(cluster):
    run = cluster(["echo master-line; echo to-stderr >&2; sleep 0.3",
                   "echo follower-line; sleep 0.5"])
    answers = run.start()
    assert all(a.get("started") for a in answers.values()), answers
    run.wait_ended(10)
    for rank in (0, 1):
        record = run.record(rank)
        assert record["state"] == "succeeded" and record["view"] == "master", record
        assert [n["exit_code"] for n in record["nodes"]] == [0, 0]
        assert [n["survivors"] for n in record["nodes"]] == [0, 0]
        assert record["ended"] >= record["started"] and record["root_cause"] is None
    assert "master-line" in run.log(0) and "[stderr] to-stderr" in run.log(0)
    assert "follower-line" in run.log(1)
    view = run.view()
    assert view.state == "succeeded" and view.result().exit_code == 0


def test_a_failing_node_stops_every_node_and_is_the_root_cause(cluster, marked_pids):
    run = cluster(["sleep 60", "sleep 60", "sleep 0.5; echo boom >&2; exit 3"])
    assert all(a.get("started") for a in run.start().values())
    took = run.wait_ended(15)
    assert took < 5
    view = run.view()
    assert view.state == "failed" and view.root_cause.host == "n2"
    assert view.root_cause.exit_code == 3 and "boom" in view.root_cause.tail
    assert view.result().exit_code == 3
    assert [n.stopped_by_teardown for n in view.nodes] == [True, True, False]
    assert "stopping this node's job: n2 (node rank 2) failed" in run.log(0)
    for rank in range(3):
        assert run.record(rank)["root_cause"]["host"] == "n2"
        assert not marked_pids(run.marker(rank))


def test_kill_9_of_a_supervisor_sweeps_its_node_and_stops_the_others(cluster, marked_pids):
    # A worker that ignores TERM: the sweep must KILL it after the grace period.
    stubborn = "trap '' TERM; sleep 60 & wait; sleep 60"
    run = cluster(["sleep 60", stubborn])
    assert all(a.get("started") for a in run.start().values())
    wait_for_pids(marked_pids, run.marker(1))
    os.kill(run.pid(1), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while marked_pids(run.marker(1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not marked_pids(run.marker(1)), "the killed supervisor's job outlived it"
    run.wait_ended(10)
    view = run.view()
    assert view.state == "failed" and view.root_cause.host == "n1"
    assert "closed the connection" in view.root_cause.lost
    assert not marked_pids(run.marker(0))


def test_sigterm_stops_the_run_everywhere_as_stopped(cluster, marked_pids):
    run = cluster(["sleep 60", "sleep 60", "sleep 60"])
    assert all(a.get("started") for a in run.start().values())
    os.kill(run.pid(1), signal.SIGTERM)
    run.wait_ended(10)
    view = run.view()
    assert view.state == "stopped" and view.root_cause is None, view
    assert all(n.stopped_by_teardown and n.survivors == 0 for n in view.nodes)
    assert "stopped on n1" in view.stop_reason
    assert view.result().exit_code == 130


def test_a_silent_master_stops_the_follower_after_the_deadline(cluster, marked_pids):
    run = cluster(["sleep 60", "sleep 60"])
    assert all(a.get("started") for a in run.start().values())
    os.kill(run.pid(0), signal.SIGSTOP)    # alive, connected, silent: like a cut link
    try:
        began = time.monotonic()
        while run.supervisor_alive(1) and time.monotonic() - began < 10:
            time.sleep(0.05)
        took = time.monotonic() - began
        assert not run.supervisor_alive(1) and 1.4 < took < 5, took
        record = run.record(1)
        assert record["state"] == "failed" and record["root_cause"]["host"] == "n0"
        assert "no heartbeat" in record["root_cause"]["lost"]
        assert not marked_pids(run.marker(1))
    finally:
        os.kill(run.pid(0), signal.SIGCONT)
    run.wait_ended(10)   # the master, resumed, finds its follower gone and stops too
    assert run.record(0)["state"] == "failed"


def test_a_follower_that_cannot_join_says_so_when_starting(cluster):
    run = cluster(["sleep 60", "sleep 60"], join_timeout=1.0)
    answers = run.start(ranks=[1])        # no master
    assert "cannot reach the master's supervisor at 127.0.0.1 port" in answers[1]["error"]
    run.wait_ended(5)
    assert run.record(1)["state"] == "failed"


def test_a_master_that_cannot_listen_says_so_when_starting(cluster):
    run = cluster(["sleep 60"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", run.port))
        taken.listen()
        answers = run.start()
    assert "cannot listen on 127.0.0.1 port" in answers[0]["error"]


def test_the_log_is_bounded(cluster):
    run = cluster(["i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; "
                   "i=$((i+1)); done"], log_max_bytes=8192)
    assert run.start()[0].get("started")
    run.wait_ended(10)
    current = run.dirs[0] / "output.log"
    older = run.dirs[0] / "output.log.1"
    assert current.stat().st_size + older.stat().st_size <= 8192
    assert "line-2999-" in current.read_text()


def test_a_stranger_without_the_token_is_turned_away(cluster):
    run = cluster(["sleep 1", "sleep 1"])
    assert run.start(ranks=[0])[0].get("started")
    with socket.create_connection(("127.0.0.1", run.port), timeout=5) as stranger:
        stranger.sendall(b'{"t": "hello", "rank": 1, "token": "guess"}\n{"t": "stop"}\n')
        assert stranger.recv(100) == b""          # closed, nothing said
    assert run.start(ranks=[1])[1].get("started")  # the real follower still joins
    run.wait_ended(10)
    assert run.record(0)["state"] == "succeeded"
