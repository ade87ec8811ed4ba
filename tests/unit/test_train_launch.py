"""Job (launch, stream, teardown), NodeOutcome.worker_failure on torchrun's real failure summary,
JobResult.exit_code and write_summary.

Job.run is driven through LocalConnection, which stands in for the SSH connection only: the
scripts Job sends (supervised_script around remote_script, then stop_script) run for real under
this machine's `sh`, so the processes started and stopped are real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from provision.connection import CommandResult
from provision.errors import HostUnreachable
from provision.inventory import Host
from provision.session import HostSession
from provision.train.argv import node_command
from provision.train.config import RUN_ID_VAR, build_train_config
from provision.train.launch import (EXIT_INTERRUPTED, Job, JobResult, NodeOutcome, TAIL_LINES,
                                    write_summary)
from provision.train.processes import stop_script

FIXTURES = Path(__file__).parent.parent / "fixtures" / "torchrun"
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != RUN_ID_VAR}


# --- worker_failure and exit codes ------------------------------------------------------------

def outcome_with(lines: list[str], **kwargs) -> NodeOutcome:
    outcome = NodeOutcome("node1", 0, **kwargs)
    outcome.tail.extend(lines)
    return outcome


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_worker_failure_names_the_root_cause_not_the_ranks_torchrun_sigtermed():
    # Captured from torch 2.13: torchrun --nproc_per_node=2 examples/ddp_smoke.py --fail-rank 1.
    # Its summary lists rank 0 (SIGTERMed by torchrun, exitcode -15) under "Failures:" before
    # the "Root Cause" entry, rank 1 with exit code 3.
    outcome = outcome_with(fixture_lines("failure.txt"))
    assert outcome.worker_failure() == (1, 3)


def test_worker_failure_with_no_other_failures():
    # torchrun --nproc_per_node=1 examples/ddp_smoke.py --fail-rank 0
    assert outcome_with(fixture_lines("failure_single.txt")).worker_failure() == (0, 3)


def test_worker_failure_fits_in_the_tail():
    # The node keeps only the last TAIL_LINES stderr lines: the summary must survive that.
    outcome = NodeOutcome("node1", 0)
    for line in fixture_lines("failure.txt"):
        outcome.tail.append(line)
    assert len(outcome.tail) == TAIL_LINES
    assert outcome.worker_failure() == (1, 3)


@pytest.mark.parametrize("lines", [
    [],
    ["Traceback (most recent call last):", "RuntimeError: boom"],
    ["  rank      : 1 (local_rank: 1)"],            # no exit code line
])
def test_worker_failure_none_without_a_summary(lines):
    assert outcome_with(lines).worker_failure() is None


def result_with(root_cause: NodeOutcome | None, interrupted: bool = False) -> JobResult:
    nodes = [root_cause] if root_cause else [NodeOutcome("node1", 0, exit_code=0)]
    return JobResult("run1", nodes, interrupted, root_cause, 0.0, 1.0, None)


def test_exit_code_all_ok_is_0():
    assert result_with(None).exit_code == 0


def test_exit_code_is_the_root_cause_workers_code():
    node = outcome_with(fixture_lines("failure.txt"), exit_code=1)     # torchrun exits 1
    assert result_with(node).exit_code == 3


def test_exit_code_is_torchruns_own_when_the_worker_died_of_a_signal():
    lines = [line.replace("exitcode  : 3 ", "exitcode  : -9 ")
             for line in fixture_lines("failure_single.txt")]
    node = outcome_with(lines, exit_code=1)
    assert node.worker_failure() == (0, -9)
    assert result_with(node).exit_code == 1


def test_exit_code_is_the_node_command_code_without_a_summary():
    assert result_with(outcome_with(["python: can't open file"], exit_code=2)).exit_code == 2


def test_exit_code_of_a_lost_node_is_255():
    node = NodeOutcome("node1", 0, lost="node1: connection lost")
    assert node.failed
    assert result_with(node).exit_code == 255


def test_exit_code_after_an_interrupt_is_130():
    assert result_with(None, interrupted=True).exit_code == EXIT_INTERRUPTED == 130


def test_a_failure_beats_an_interrupt():
    node = outcome_with([], exit_code=4)
    assert result_with(node, interrupted=True).exit_code == 4


def test_stopped_by_teardown_is_not_a_failure():
    node = NodeOutcome("node2", 1, exit_code=143, stopped_by_teardown=True)
    assert not node.failed
    assert NodeOutcome("node2", 1, exit_code=143).failed
    assert not NodeOutcome("node2", 1).failed


# --- Job.run with real local processes --------------------------------------------------------

class LocalProcess:
    """Stands in for connection.RemoteProcess: the script runs under the local sh."""

    def __init__(self, script: str, hold_stdin: bool, stdin: bytes | None):
        self.command = script
        self.popen = subprocess.Popen(["sh", "-c", script], env=CLEAN_ENV,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        if stdin:
            self.popen.stdin.write(stdin)
            self.popen.stdin.flush()
        if not hold_stdin:
            self.popen.stdin.close()

    def wait(self, timeout: float, on_line=None) -> CommandResult:
        out = {"stdout": bytearray(), "stderr": bytearray()}
        pending = {"stdout": bytearray(), "stderr": bytearray()}
        selector = selectors.DefaultSelector()
        selector.register(self.popen.stdout, selectors.EVENT_READ, "stdout")
        selector.register(self.popen.stderr, selectors.EVENT_READ, "stderr")
        open_streams = 2
        while open_streams:
            for key, _ in selector.select():
                data = os.read(key.fileobj.fileno(), 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                out[key.data] += data
                pending[key.data] += data
                *lines, rest = pending[key.data].split(b"\n")
                for line in lines:
                    if on_line:
                        on_line(key.data, line.decode(errors="replace"))
                pending[key.data] = bytearray(rest)
        for stream, rest in pending.items():
            if rest and on_line:
                on_line(stream, rest.decode(errors="replace"))
        code = self.popen.wait()
        if not self.popen.stdin.closed:
            self.popen.stdin.close()
        return CommandResult(self.command, code, out["stdout"].decode(errors="replace"),
                             out["stderr"].decode(errors="replace"))

    def close(self) -> None:
        if not self.popen.stdin.closed:
            self.popen.stdin.close()


class LocalConnection:
    """Stands in for connection.HostConnection: runs every script on this machine."""

    def __init__(self, host: Host, lost_when: Path | None = None):
        self.host = host
        self.lost_when = lost_when
        self.started: list[LocalProcess] = []
        self.ran: list[str] = []

    def start(self, command, *, sudo=False, stdin=None, hold_stdin=False) -> LocalProcess:
        if self.lost_when is not None:
            # The connection dies (once `lost_when` exists) before the job could start.
            while not self.lost_when.exists():
                time.sleep(0.02)
            raise HostUnreachable(f"{self.host.name}: connection lost: closed")
        process = LocalProcess(command, hold_stdin, stdin)
        self.started.append(process)
        return process

    def run(self, command, *, sudo=False, stdin=None, timeout=None, on_line=None, on_sent=None):
        if self.lost_when is not None:
            raise HostUnreachable(f"{self.host.name}: connection lost: closed")
        self.ran.append(command)
        return self.start(command, stdin=stdin).wait(timeout or 60, on_line)

    def close(self) -> None:
        for process in self.started:
            process.close()


class Harness:
    def __init__(self, tmp_path: Path, scripts: dict[str, str], lost=None, grace=0.5):
        self.run_id = f"t-{uuid.uuid4().hex[:12]}"
        hosts = [Host(name, f"10.9.0.{i + 1}") for i, name in enumerate(scripts)]
        self.config = build_train_config(hosts, script="train.py", run_id=self.run_id,
                                         python="/usr/bin/python3", workdir=str(tmp_path))
        self.connections = {h.name: LocalConnection(h, (lost or {}).get(h.name)) for h in hosts}
        sessions = {name: HostSession(c) for name, c in self.connections.items()}
        commands = {h.name: dataclasses.replace(node_command(self.config, h, "lo"),
                                                argv=["sh", "-c", scripts[h.name]])
                    for h in hosts}
        self.lines: list[tuple[str, int, str, str]] = []
        self.log_dir = tmp_path / "logs"
        self.job = Job(self.config, sessions, commands, self.log_dir,
                       lambda *line: self.lines.append(line), grace=grace)

    def run(self) -> JobResult:
        try:
            return self.job.run()
        finally:
            for connection in self.connections.values():
                connection.close()

    def cleanup(self) -> None:
        subprocess.run(["sh", "-c", stop_script(self.run_id, 0.1)], env=CLEAN_ENV,
                       capture_output=True)


@pytest.fixture
def harness(tmp_path):
    made: list[Harness] = []

    def make(scripts: dict[str, str], **kwargs) -> Harness:
        made.append(Harness(tmp_path, scripts, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.cleanup()


def test_all_nodes_succeed(harness):
    # $PROVISION_RUN_ID is expanded by the node's sh: the job really got its marker.
    h = harness({name: f'echo "hello from {name} $PROVISION_RUN_ID"; echo warn >&2'
                 for name in ("node1", "node2", "node3")})
    result = h.run()

    assert result.exit_code == 0
    assert result.root_cause is None and not result.interrupted
    assert result.teardown_seconds is None                # nothing to tear down
    assert [(o.host, o.rank, o.exit_code) for o in result.nodes] == \
        [("node1", 0, 0), ("node2", 1, 0), ("node3", 2, 0)]
    for rank, name in enumerate(("node1", "node2", "node3")):
        log = (h.log_dir / f"{name}.log").read_text()
        assert log == f"hello from {name} {h.run_id}\n[stderr] warn\n"
        assert (name, rank, "stdout", f"hello from {name} {h.run_id}") in h.lines
        assert (name, rank, "stderr", "warn") in h.lines
        assert list(result.nodes[rank].tail) == ["warn"]   # the tail keeps stderr only
    assert not any(c.ran for c in h.connections.values())  # no stop_script ran
    assert result.started <= result.ended


def test_nodes_start_in_parallel(harness):
    # Every node's start (an SSH connect, in real life) waits for all the others to begin:
    # starts made one at a time would break the barrier instead.
    h = harness({name: "echo started" for name in ("node1", "node2", "node3")})
    barrier = threading.Barrier(3, timeout=5)
    for connection in h.connections.values():
        start = connection.start

        def start_together(*args, start=start, **kwargs):
            barrier.wait()
            return start(*args, **kwargs)
        connection.start = start_together
    result = h.run()

    assert result.exit_code == 0
    assert [o.exit_code for o in result.nodes] == [0, 0, 0]


def up(tmp_path: Path, name: str) -> str:
    """A job line that marks the node's job as running, then keeps it running."""
    return f"touch {tmp_path}/{name}.up; sleep 30"


def when_up(tmp_path: Path, *names: str) -> str:
    """A sh condition loop: wait until every named node's job is running."""
    files = " && ".join(f"[ -e {tmp_path}/{name}.up ]" for name in names)
    return f"until {files}; do sleep 0.05; done"


def test_a_failed_node_is_the_root_cause_and_the_others_are_stopped(harness, tmp_path, marked_pids):
    started = time.monotonic()
    h = harness({"node1": up(tmp_path, "node1"),
                 "node2": f"{when_up(tmp_path, 'node1', 'node3')}; echo boom >&2; exit 3",
                 "node3": up(tmp_path, "node3")})
    result = h.run()

    assert time.monotonic() - started < 25     # not the 30 s the others would sleep
    assert result.root_cause is not None and result.root_cause.host == "node2"
    assert result.exit_code == 3
    assert list(result.root_cause.tail) == ["boom"]
    by_host = {o.host: o for o in result.nodes}
    assert not by_host["node2"].stopped_by_teardown
    for name in ("node1", "node3"):
        assert by_host[name].stopped_by_teardown
        assert not by_host[name].failed
        assert by_host[name].exit_code == 143          # the supervised sh saw its job TERMed
    assert all(o.survivors == 0 for o in result.nodes)
    assert result.teardown_seconds is not None and result.teardown_seconds < 15
    assert marked_pids(h.run_id) == set()
    assert "[stderr] boom" in (h.log_dir / "node2.log").read_text()


def test_interrupt_stops_every_node_with_130(harness, tmp_path, marked_pids):
    h = harness({"node1": f"echo up; {up(tmp_path, 'node1')}",
                 "node2": f"echo up; {up(tmp_path, 'node2')}"})

    def interrupt_when_up() -> None:
        deadline = time.monotonic() + 10
        while not all((tmp_path / f"{n}.up").exists() for n in ("node1", "node2")) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        h.job.interrupt()

    thread = threading.Thread(target=interrupt_when_up)
    thread.start()
    result = h.run()
    thread.join()

    assert result.interrupted and result.root_cause is None
    assert result.exit_code == 130
    assert all(o.stopped_by_teardown and o.survivors == 0 for o in result.nodes)
    assert all(o.exit_code == 143 for o in result.nodes)
    assert marked_pids(h.run_id) == set()
    assert sorted(line for line in h.lines if line[2] == "stdout") == \
        [("node1", 0, "stdout", "up"), ("node2", 1, "stdout", "up")]


def test_what_nodes_print_while_being_stopped_goes_to_their_logs_only(harness, tmp_path,
                                                                    marked_pids):
    # torchrun answers the TERM of a teardown with a SignalException traceback on every node.
    on_term = "trap 'echo Traceback: SignalException >&2; exit 143' TERM"
    h = harness({"node1": f"{on_term}; echo up; touch {tmp_path}/node1.up; "
                          "while :; do sleep 0.05; done",
                 "node2": f"{when_up(tmp_path, 'node1')}; echo boom >&2; exit 3"})
    result = h.run()

    assert result.root_cause.host == "node2"
    assert "Traceback: SignalException" in (h.log_dir / "node1.log").read_text()
    printed = [line for host, _, _, line in h.lines if host == "node1"]
    assert printed == ["up"]
    assert marked_pids(h.run_id) == set()


def test_a_lost_node_is_the_root_cause_with_255(harness, tmp_path, marked_pids):
    h = harness({"node1": up(tmp_path, "node1"), "node2": up(tmp_path, "node2")},
                lost={"node2": tmp_path / "node1.up"})
    result = h.run()

    assert result.root_cause.host == "node2"
    assert result.root_cause.lost == "node2: connection lost: closed"
    assert result.exit_code == 255
    node1 = result.nodes[0]
    assert node1.stopped_by_teardown and node1.survivors == 0
    assert result.nodes[1].survivors is None             # a lost node is not asked
    assert h.connections["node2"].ran == []
    assert len(h.connections["node1"].ran) == 1          # the stop script
    assert marked_pids(h.run_id) == set()
    assert "connection lost" in (h.log_dir / "node2.log").read_text()


def test_a_controller_error_following_a_node_fails_the_job_instead_of_hanging_it(
        harness, tmp_path, marked_pids):
    h = harness({"node1": up(tmp_path, "node1"), "node2": "echo boom"})

    def sink(host, rank, stream, line):
        if host == "node2":
            raise OSError(5, "Input/output error")    # e.g. the controller's stdout went away
    h.job.sink = sink
    result = h.run()

    assert result.root_cause.host == "node2"
    assert result.root_cause.error == "OSError: [Errno 5] Input/output error"
    assert result.exit_code == 255
    assert result.nodes[0].stopped_by_teardown and result.nodes[0].survivors == 0
    assert marked_pids(h.run_id) == set()
    assert "controller error: OSError" in (h.log_dir / "node2.log").read_text()


# --- write_summary ----------------------------------------------------------------------------

def test_write_summary_shape(tmp_path):
    hosts = [Host("node1", "10.9.0.1"), Host("node2", "10.9.0.2")]
    config = build_train_config(hosts, script="train.py", run_id="run-7",
                                python="/usr/bin/python3", workdir="/tmp/run-7")
    root = outcome_with(fixture_lines("failure.txt"), exit_code=1, finished_at=12.5)
    other = NodeOutcome("node2", 1, exit_code=143, stopped_by_teardown=True, survivors=0,
                        finished_at=13.0)
    root.survivors = 0
    result = JobResult("run-7", [root, other], False, root, 10.0, 14.0, 0.75)
    path = tmp_path / "summary.json"

    write_summary(result, path, ["provision", "train", "inv.yml", "train.py"], "ab" * 32, config)

    summary = json.loads(path.read_text())
    assert summary == {
        "run_id": "run-7", "command": ["provision", "train", "inv.yml", "train.py"],
        "inventory_sha256": "ab" * 32, "script": "train.py", "master": "10.9.0.1:29500",
        "started": 10.0, "ended": 14.0, "exit_code": 3, "interrupted": False,
        "teardown_seconds": 0.75,
        "root_cause": {"host": "node1", "rank": 0, "exit_code": 1, "lost": None,
                       "error": None, "stopped_by_teardown": False, "survivors": 0,
                       "finished_at": 12.5},
        "nodes": [
            {"host": "node1", "rank": 0, "exit_code": 1, "lost": None, "error": None,
             "stopped_by_teardown": False, "survivors": 0, "finished_at": 12.5},
            {"host": "node2", "rank": 1, "exit_code": 143, "lost": None, "error": None,
             "stopped_by_teardown": True, "survivors": 0, "finished_at": 13.0}]}
    assert path.read_text().endswith("\n")


def test_write_summary_without_a_root_cause(tmp_path):
    hosts = [Host("node1", "10.9.0.1")]
    config = build_train_config(hosts, script="t.py", run_id="r", python="/usr/bin/python3",
                                workdir="/w")
    node = NodeOutcome("node1", 0, exit_code=0)
    write_summary(JobResult("r", [node], True, None, 1.0, 2.0, 0.1), tmp_path / "s.json", [],
                  "", config)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["root_cause"] is None
    assert summary["exit_code"] == 130 and summary["interrupted"] is True
