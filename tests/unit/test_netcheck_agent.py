"""The measuring program for real, on this machine's loopback: started the way the controller
starts it on a node (agent_argv through sh, its source on stdin), two of them measuring each
other. Only that figures come back is checked, never how fast anything is."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from provision.netcheck.pairwise import AGENT_SOURCE, agent_argv, round_trip


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class LocalAgent:
    def __init__(self, address: str, port: int | None = None, deadline: float = 60,
                 pythons: list[str] | None = None):
        self.address, self.port = address, port or free_port(address)
        self.process = subprocess.Popen(
            agent_argv(pythons or ["/nonexistent/python", sys.executable], address, self.port,
                       deadline),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.process.stdin.write(AGENT_SOURCE.encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            pass      # no Python: sh exited before reading the program
        self.next_id = 0

    def line(self) -> dict:
        return json.loads(self.process.stdout.readline())

    def ask(self, **op) -> dict:
        self.next_id += 1
        self.process.stdin.write((json.dumps({"id": self.next_id, **op}) + "\n").encode())
        self.process.stdin.flush()
        return self.line()

    def close(self) -> int:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        return self.process.wait(timeout=20)


@pytest.fixture
def pair():
    agents = [LocalAgent("127.0.0.1"), LocalAgent("127.0.0.2")]
    yield agents
    for agent in agents:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()


def test_two_agents_measure_each_other_and_exit_when_stdin_closes(pair):
    a, b = pair
    assert a.line()["event"] == b.line()["event"] == "ready"
    rtt = a.ask(op="rtt", to=[b.address, b.port], count=20)
    assert rtt["id"] == 1 and len(rtt["rtt_ms"]) == 20 and min(rtt["rtt_ms"]) > 0
    forward = a.ask(op="bw", to=[b.address, b.port], seconds=0.2)
    backward = b.ask(op="bw", to=[a.address, a.port], seconds=0.2)
    assert forward["bps"] > 0 and backward["bps"] > 0
    assert a.close() == 0 and b.close() == 0


def test_it_listens_on_its_address_only(pair):
    a, _ = pair
    assert a.line()["event"] == "ready"
    with socket.socket() as other:
        other.settimeout(2)
        with pytest.raises(OSError):
            other.connect(("127.0.0.3", a.port))


def test_an_unreachable_peer_is_an_error_answer_not_a_hang(pair):
    a, _ = pair
    assert a.line()["event"] == "ready"
    answer = a.ask(op="bw", to=["127.0.0.1", free_port("127.0.0.1")], seconds=0.2)
    assert answer == {"id": 1, "error": "[Errno 111] Connection refused"}
    assert "error" in a.ask(op="teleport", to=["127.0.0.1", 1])
    assert a.close() == 0


def test_a_taken_port_is_reported_and_the_program_exits():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        agent = LocalAgent("127.0.0.1", holder.getsockname()[1])
        message = agent.line()
        assert message["event"] == "error" and "cannot listen on 127.0.0.1 port" in message["error"]
        assert agent.close() == 1
    finally:
        holder.close()


def test_the_hard_deadline_ends_it_with_stdin_still_open():
    agent = LocalAgent("127.0.0.1", deadline=1)
    assert agent.line()["event"] == "ready"
    assert agent.line()["event"] == "deadline"
    assert agent.process.wait(timeout=20) == 3
    agent.close()


def test_no_python_on_the_node_says_so():
    agent = LocalAgent("127.0.0.1", pythons=["/nonexistent/python", "no-such-python3"])
    assert agent.process.wait(timeout=20) == 127
    assert b"no Python on this node" in agent.process.stderr.read()
    agent.close()


def test_round_trip_is_the_lower_quartile_of_the_samples():
    # 20 pings, half of them caught by a busy scheduler: the link's own figure stands.
    samples = [0.05] * 10 + [4.0] * 10
    assert round_trip(samples) == 0.05
    assert round_trip([20.1] * 19 + [20.3]) == 20.1      # a fixed delay is in every sample
    assert round_trip([0.3]) == 0.3 and round_trip([]) is None
