"""The pairwise check: a measuring program on every node, driven step by step over SSH.

Each node runs provision/netcheck/agent.py, sent over the SSH channel's stdin and run by the
node's own Python, with the channel's stdin held open as the controller's request line: when the
controller exits or its connection dies, stdin closes and the program ends (it also has a hard
deadline of its own). A request that is not answered in time marks its node as stalled; the
node is left out of the steps after it, so a stuck node costs one timeout, never a hang.
"""

from __future__ import annotations

import json
import shlex
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from provision.connection import RemoteProcess
from provision.errors import HostUnreachable
from provision.netcheck.endpoint import Endpoint
from provision.netcheck.schedule import Step, Transfer, pairs_of
from provision.netcheck.verdict import Link
from provision.session import HostSession

AGENT_SOURCE = (Path(__file__).with_name("agent.py")).read_text()
# Reads the program from stdin, then leaves the rest of stdin to it as its request line.
BOOTSTRAP = ("import sys; n = int(sys.argv[1]); source = sys.stdin.buffer.read(n); "
             "sys.argv = ['provision-net-agent'] + sys.argv[2:]; "
             "exec(compile(source, 'provision-net-agent', 'exec'), {'__name__': '__main__'})")
RTT_COUNT = 20
RTT_STEP_SECONDS = 3.0       # the agent's cap on ping-pong (RTT_TIME_CAP), per step
ANSWER_SLACK = 12.0          # over a step's own length: connect, report, a loaded host
START_TIMEOUT = 20.0         # from starting Python to the program listening


def agent_argv(pythons: list[str], address: str, port: int, deadline: float) -> list[str]:
    """The first of `pythons` the node has runs the bootstrap; -I -S: standard library only,
    and none of the environment's site-packages to import."""
    script = ('for p in ' + " ".join(shlex.quote(p) for p in pythons) + '; do '
              'if command -v "$p" >/dev/null 2>&1; then exec "$p" -I -S -c "$0" "$@"; fi; done; '
              'echo "no Python on this node (tried: ' + " ".join(pythons).replace('"', "")
              + ')" >&2; exit 127')
    return ["sh", "-c", script, BOOTSTRAP, str(len(AGENT_SOURCE.encode())), address, str(port),
            f"{deadline:.0f}"]


def round_trip(samples: list[float]) -> float | None:
    """A link's round trip: the lower quartile of its samples. A path's own delay is in every
    sample; a busy host's scheduling delays (milliseconds on loaded cores) only in some, and
    the median of a short burst of pings catches them too often."""
    if len(samples) < 2:
        return samples[0] if samples else None
    return statistics.quantiles(samples, n=4)[0]


def step_seconds(step: Step, seconds: float) -> float:
    return RTT_STEP_SECONDS if step and step[0].kind == "rtt" else seconds


def run_seconds(rounds: list[list[Step]], seconds: float) -> float:
    """What the steps take at most, answers included: the programs' hard deadline."""
    return sum(step_seconds(step, seconds) + ANSWER_SLACK for steps in rounds for step in steps) \
        + START_TIMEOUT


class Agent:
    """One node's measuring program: requests out on its stdin, answers in from its stdout."""

    def __init__(self, name: str, session: HostSession, endpoint: Endpoint, port: int):
        self.name = name
        self.session = session
        self.endpoint = endpoint
        self.port = port
        self.problem: str | None = None     # why it cannot (any longer) take part
        self._answers: dict = {}
        self._ready = False
        self._changed = threading.Condition()
        self._process: RemoteProcess | None = None
        self._reader: threading.Thread | None = None
        self._next_id = 0

    @property
    def target(self) -> list:
        return [self.endpoint.address, self.port]

    def start(self, pythons: list[str], deadline: float) -> None:
        """Start the program and wait until it listens; sets `problem` when it does not."""
        try:
            self._process = self.session.connection.start(
                agent_argv(pythons, self.endpoint.address, self.port, deadline),
                stdin=AGENT_SOURCE.encode(), hold_stdin=True)
        except HostUnreachable as exc:
            self.problem = str(exc)
            return
        self.session.round_trips += 1
        self._reader = threading.Thread(target=self._read, args=(deadline + 30,), daemon=True,
                                        name=f"net-{self.name}")
        self._reader.start()
        with self._changed:
            self._changed.wait_for(lambda: self._ready or self.problem, START_TIMEOUT)
            if not self._ready and not self.problem:
                self.problem = f"the measuring program did not start within {START_TIMEOUT:.0f} s"

    def _read(self, timeout: float) -> None:
        stderr: list[str] = []

        def on_line(stream: str, line: str) -> None:
            if stream == "stderr":
                stderr.append(line)
                return
            try:
                message = json.loads(line)
            except ValueError:
                return
            with self._changed:
                if message.get("event") == "ready":
                    self._ready = True
                elif message.get("event") == "error":
                    self.problem = message["error"] + (
                        " (a training job running on this node? stop it, or set "
                        "rendezvous_port to a free port the firewall opens)"
                        if "in use" in message["error"] else "")
                elif message.get("event") == "deadline":
                    self.problem = "the measuring program reached its deadline"
                elif "id" in message:
                    self._answers[message["id"]] = message
                self._changed.notify_all()

        try:
            result = self._process.wait(timeout, on_line)
            ended = (f"the measuring program exited with code {result.exit_code}"
                     + (": " + stderr[-1] if stderr else ""))
        except HostUnreachable as exc:
            ended = str(exc)
        with self._changed:
            self.problem = self.problem or ended
            self._changed.notify_all()

    def request(self, op: dict) -> int | None:
        """Send a request; its id, or None when the program is gone."""
        if self.problem:
            return None
        self._next_id += 1
        try:
            self._process.channel.sendall((json.dumps({"id": self._next_id, **op}) + "\n")
                                          .encode())
        except (OSError, EOFError) as exc:
            self.problem = f"connection lost: {exc}"
            return None
        return self._next_id

    def answer(self, request_id: int, deadline: float) -> dict:
        """The answer to a request, or {"error": ...} when none came by `deadline`
        (time.monotonic()); a missing answer means the node is stalled."""
        with self._changed:
            self._changed.wait_for(lambda: request_id in self._answers or self.problem,
                                   max(0.0, deadline - time.monotonic()))
            if request_id in self._answers:
                return self._answers.pop(request_id)
            if not self.problem:
                self.problem = "the measuring program stopped answering"
            return {"error": f"{self.name}: {self.problem}"}

    def stop(self) -> None:
        """Close its stdin (it exits) and wait, so its port is free for what comes next."""
        if self._process is None:
            return
        try:
            self._process.channel.shutdown_write()
        except (OSError, EOFError):
            pass
        if self._reader is not None:
            self._reader.join(10)
        self._process.close()


@dataclass
class _Figures:
    forward: float | None = None
    backward: float | None = None
    rtt_ms: float | None = None
    problems: list[str] = field(default_factory=list)


def _entry(figures: dict[tuple[str, str], _Figures], transfer: Transfer) -> tuple[_Figures, bool]:
    """The figures of the transfer's pair, and whether it goes the pair's first way."""
    if (transfer.source, transfer.target) in figures:
        return figures[(transfer.source, transfer.target)], True
    return figures[(transfer.target, transfer.source)], False


def _run_step(step: Step, agents: dict[str, Agent], seconds: float,
              figures: dict[tuple[str, str], _Figures]) -> None:
    """Send every transfer's request at once, then collect the answers."""
    pending: list[tuple[Transfer, int]] = []
    for transfer in step:
        source, target = agents[transfer.source], agents[transfer.target]
        op = {"op": transfer.kind, "to": target.target}
        op.update({"count": RTT_COUNT} if transfer.kind == "rtt" else {"seconds": seconds})
        request_id = None if target.problem else source.request(op)
        if request_id is None:
            gone = source if source.problem else target
            _entry(figures, transfer)[0].problems.append(f"{gone.name}: {gone.problem}")
            continue
        pending.append((transfer, request_id))
    deadline = time.monotonic() + step_seconds(step, seconds) + ANSWER_SLACK
    for transfer, request_id in pending:
        answer = agents[transfer.source].answer(request_id, deadline)
        entry, forward = _entry(figures, transfer)
        if "error" in answer:
            entry.problems.append(f"{transfer.source} -> {transfer.target}: {answer['error']}")
        elif transfer.kind == "rtt":
            entry.rtt_ms = round_trip(answer["rtt_ms"])
        elif forward:
            entry.forward = answer["bps"]
        else:
            entry.backward = answer["bps"]


def start_agents(sessions: dict[str, HostSession], endpoints: dict[str, Endpoint],
                 ports: dict[str, int], pythons: dict[str, list[str]],
                 deadline: float) -> dict[str, Agent]:
    """A started Agent per node, in parallel; those that failed carry their `problem`."""
    agents = {name: Agent(name, sessions[name], endpoints[name], ports[name])
              for name in endpoints}
    with ThreadPoolExecutor(max_workers=max(1, len(agents))) as pool:
        list(pool.map(lambda agent: agent.start(pythons[agent.name], deadline), agents.values()))
    return agents


def measure(agents: dict[str, Agent], rounds: list[list[Step]], seconds: float,
            progress: Callable[[int, int], None] = lambda done, total: None) -> list[Link]:
    """Run the steps on agents that started; every pair of the plan comes back as a Link,
    with the problem that kept it from being measured if one did."""
    figures = {pair: _Figures() for pair in pairs_of(rounds)}
    for index, steps in enumerate(rounds):
        progress(index, len(rounds))
        for step in steps:
            _run_step(step, agents, seconds, figures)
    progress(len(rounds), len(rounds))
    order = {name: index for index, name in enumerate(agents)}
    links = []
    for (a, b), f in figures.items():
        missing = f.forward is None or f.backward is None
        problem = "; ".join(dict.fromkeys(f.problems)) or ("no figure" if missing else None)
        if order[a] > order[b]:   # reported in inventory order, whichever went first
            a, b, f.forward, f.backward = b, a, f.backward, f.forward
        links.append(Link(a, b, f.forward, f.backward, f.rtt_ms, problem))
    return sorted(links, key=lambda link: (order[link.a], order[link.b]))
