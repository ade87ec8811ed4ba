"""Checks before a launch, so a mistake is a message naming the node and the fix instead of a
rendezvous that hangs for 15 minutes: one batched round trip per node, plus one port probe."""

from __future__ import annotations

import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from provision.operations.ntp import ClockReading, parse_remote_ns, skew_verdict
from provision.facts.base import Fact
from provision.facts.conda import LOCK_MARKER, EnvVersions, PythonVersions, differences
from provision.facts.files import PathState
from provision.facts.net import PortFree, RouteInterface
from provision.session import HostSession
from provision.train.config import TrainConfig


@dataclass(frozen=True)
class RemoteClock(Fact):
    """The host's clock, in nanoseconds."""

    def command(self) -> str:
        return "date +%s.%N"

    def parse(self, stdout: str, rc: int) -> int:
        return parse_remote_ns(stdout)


@dataclass(frozen=True)
class Executable(Fact):
    path: str

    def command(self) -> str:
        return f"test -x {shlex.quote(self.path)}"

    def parse(self, stdout: str, rc: int) -> bool:
        return rc == 0


@dataclass
class NodeReport:
    host: str
    clock: ClockReading
    ifname: str | None = None
    lock_hash: str | None = None
    has_python: bool = True
    versions: EnvVersions | None = None         # what --python runs (not setup's environment)
    problems: list[str] = field(default_factory=list)


def env_prefix(python: str) -> str:
    return os.path.dirname(os.path.dirname(python))


def _inspect(session: HostSession, config: TrainConfig, script_in_place: bool,
             built_env: bool) -> NodeReport:
    host = session.connection.host
    marker = os.path.join(env_prefix(config.python), LOCK_MARKER)
    facts: list[Fact] = [RemoteClock(), RouteInterface(config.master.address),
                         Executable(config.python), PathState(marker, True)]
    if host.name == config.master.name:
        facts.append(PortFree(config.master_port))
    if script_in_place:
        facts.append(PathState(config.script))
    sent = time.time_ns()
    values = session.gather(facts)
    report = NodeReport(host.name, ClockReading(host.name, sent, values[RemoteClock()],
                                                time.time_ns()))
    report.ifname = values[RouteInterface(config.master.address)]
    if report.ifname is None:
        report.problems.append(f"no route to the master {config.master.name} "
                               f"({config.master.address}): check the network or set master")
    report.has_python = values[Executable(config.python)]
    if not report.has_python:
        report.problems.append(f"{config.python} does not exist: run `provision setup` "
                               "(conda role) or pass --python")
    lock = values[PathState(marker, True)]
    if lock is not None and lock.content is not None:
        report.lock_hash = lock.content.decode().strip()
    elif built_env:
        report.problems.append(f"the training environment has no lock marker ({marker}): its "
                               "creation did not finish; run `provision setup --tags conda`")
    if PortFree(config.master_port) in values and not values[PortFree(config.master_port)]:
        report.problems.append(f"rendezvous port {config.master_port} is already in use on the "
                               "master (another job?): stop it or set rendezvous_port")
    if script_in_place and values[PathState(config.script)] is None:
        report.problems.append(f"{config.script} is not on this node's shared mount")
    return report


# Accepts the other nodes' connections; stops early when the controller closes its stdin, so
# the port is free again before torchrun needs it.
PROBE_LISTEN = ("import select,socket,sys,time\n"
                "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                "s.bind(('', int(sys.argv[1]))); s.listen(64)\n"
                "print('listening', flush=True)\n"
                "left, deadline = int(sys.argv[2]), time.time() + 10\n"
                "while left > 0:\n"
                "    ready = select.select([s, sys.stdin], [], [], max(0, deadline - time.time()))[0]\n"
                "    if not ready or sys.stdin in ready:\n"
                "        break\n"
                "    s.accept()[0].close(); left -= 1\n")
PROBE_CONNECT = ("import socket,sys\n"
                 "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n")
# Standard library only: -I -S skip site-packages and their .pth files (slow in a big env).
PROBE_PYTHON_FLAGS = ["-I", "-S", "-c"]


def _probe_port(sessions: dict[str, HostSession], config: TrainConfig,
                reports: dict[str, NodeReport]) -> None:
    """Listen on the master's rendezvous port and connect to it from every other node: what a
    firewall blocks shows up here, not as a hang after launch."""
    others = [n.name for n in config.nodes if n.name != config.master.name]
    master = sessions[config.master.name]
    listener = master.connection.start(
        [config.python, *PROBE_PYTHON_FLAGS, PROBE_LISTEN, str(config.master_port),
         str(len(others))], hold_stdin=True)
    started = listener.channel.recv(64)
    if b"listening" not in started:
        listener.channel.shutdown_write()
        result = listener.wait(10)
        reports[config.master.name].problems.append(
            f"cannot listen on port {config.master_port}: {result.describe_failure()}")
        return

    def connect(name: str) -> None:
        result = sessions[name].run([config.python, *PROBE_PYTHON_FLAGS, PROBE_CONNECT,
                                     config.master.address, str(config.master_port)],
                                    timeout=10)
        if not result.ok:
            reports[name].problems.append(
                f"cannot connect to the master {config.master.name} at "
                f"{config.master.address}:{config.master_port} (a firewall?): run "
                "`provision setup --tags firewall`, or open the port to this node")

    with ThreadPoolExecutor(max_workers=len(others)) as pool:
        list(pool.map(connect, others))
    listener.channel.shutdown_write()
    listener.wait(15)  # it has exited, and let the port go, before torchrun binds it


def _compare_versions(sessions: dict[str, HostSession], config: TrainConfig,
                      reports: dict[str, NodeReport]) -> None:
    """What each node's python runs (one more round trip: it imports torch), compared; a node
    without the python already has its problem."""
    fact = PythonVersions(config.python)
    asked = [name for name in sessions if reports[name].has_python]
    with ThreadPoolExecutor(max_workers=max(1, len(asked))) as pool:
        found = dict(zip(asked, pool.map(lambda n: sessions[n].gather([fact])[fact], asked)))
    for name, versions in found.items():
        reports[name].versions = versions
        if versions.error:
            reports[name].problems.append(f"{config.python}: {versions.error}")
    mismatch = differences({n: v for n, v in found.items() if not v.error})
    if mismatch:
        for report in reports.values():
            report.problems.append(f"the nodes' Pythons differ in {'; '.join(mismatch)}")


def check_nodes(sessions: dict[str, HostSession], config: TrainConfig, script_in_place: bool,
                max_skew_ms: float, built_env: bool = True) -> dict[str, NodeReport]:
    """Every node's report; an unreachable node raises HostUnreachable naming it. `built_env`:
    the environment is setup's, so its lock marker must be there and the same on every node.
    Else (--python) the locks are compared where every node has one; where not, the python,
    torch, CUDA and NCCL versions it runs are (each report's `versions` then says so)."""
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        futures = {name: pool.submit(_inspect, s, config, script_in_place, built_env)
                   for name, s in sessions.items()}
        reports = {name: future.result() for name, future in futures.items()}
    if not built_env and not all(r.lock_hash for r in reports.values()):
        _compare_versions(sessions, config, reports)
    hashes = {r.lock_hash for r in reports.values() if r.lock_hash}
    if len(hashes) > 1:
        for report in reports.values():
            report.problems.append(
                f"training environments differ between nodes (lock {report.lock_hash}): "
                "run `provision setup --tags conda` so every node has the same lock")
    skew = skew_verdict([r.clock for r in reports.values()], max_skew_ms)
    # A launch is refused only when the spread exceeds the limit beyond doubt: by more than
    # the spread's own uncertainty (the extreme nodes' half round trips).
    if skew.spread_ms - skew.uncertainty_ms > max_skew_ms:
        for name in sorted(skew.outliers):
            reports[name].problems.append(
                f"clock {reports[name].clock.offset_ms:+.0f} ms from the controller, "
                f"{reports[name].clock.offset_ms - skew.median_ms:+.0f} ms from the median node's "
                f"({skew.reference}); nodes differ by {skew.spread_ms:.0f} ms (limit "
                f"{max_skew_ms:g} ms): run `provision setup --tags ntp`")
    if len(config.nodes) > 1 and not any(r.problems for r in reports.values()):
        _probe_port(sessions, config, reports)
    return reports

