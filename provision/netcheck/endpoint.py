"""Where a node's measuring program listens: the interface `train` would use, and its address.

The interface is chosen as `train` chooses it: the one named by the inventory
(`nccl_socket_ifname`, or NCCL_/GLOO_SOCKET_IFNAME in `train_env`), else the one the node
reaches the master on. The address is the source address the node's route to the master uses
(for a named interface: its first address), so that peers measure the path training takes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from provision.errors import HostUnreachable
from provision.facts.base import Fact
from provision.facts.net import RouteInterface
from provision.inventory import Host
from provision.session import HostSession
from provision.settings import IFNAME_RE
from provision.train.argv import INTERFACE_VARS
from provision.train.config import DEFAULT_RENDEZVOUS_PORT, TrainConfig
from provision.train.prelaunch import Executable

# `ip -o addr show`: "7: eth0    inet 10.213.0.11/24 brd ... scope global eth0\ ...".
_ADDR = re.compile(r"^\d+:\s+(?P<ifname>\S+)\s+(?P<family>inet6?)\s+(?P<address>[^/\s]+)")


@dataclass(frozen=True)
class Endpoint:
    ifname: str
    address: str


def chosen_interface(env: Mapping[str, str]) -> str | None:
    """The interface a node's training environment names, when it names one plainly (NCCL's
    prefix and exclusion lists such as `^docker,lo` leave the choice to the route)."""
    for name in reversed(INTERFACE_VARS):   # gloo's first: the collective check runs on gloo
        value = env.get(name)
        if value and IFNAME_RE.fullmatch(value):
            return value
    return None


def _interface_address(lines: list[str], ifname: str) -> str | None:
    """The interface's first IPv4 address, else its first IPv6 address that is not
    link-local (one of those needs a scope id to be reached)."""
    found = [m for m in map(_ADDR.match, lines) if m and m["ifname"] == ifname]
    for match in found:
        if match["family"] == "inet":
            return match["address"]
    for match in found:
        if not match["address"].lower().startswith("fe80:"):
            return match["address"]
    return None


@dataclass(frozen=True)
class TrainingEndpoint(Fact):
    """The node's training interface and address; ValueError says why there is none."""

    master: str                   # the master's address, as train routes to it
    ifname: str | None = None     # the interface the inventory names, if it does

    def command(self) -> str:
        if self.ifname:
            return f"ip -o addr show dev {shlex.quote(self.ifname)}"
        return RouteInterface(self.master).command()

    def parse(self, stdout: str, rc: int) -> Endpoint:
        lines = stdout.splitlines()
        if self.ifname:
            if rc == 127:
                raise ValueError("`ip` (iproute2) is not installed")
            address = _interface_address(lines, self.ifname) if rc == 0 else None
            if address is None:
                raise ValueError(f"interface {self.ifname} (set in the inventory) does not exist "
                                 "or has no address")
            return Endpoint(self.ifname, address)
        ifname = RouteInterface(self.master).parse(stdout, rc)
        if ifname is None:
            raise ValueError(f"no route to the master ({self.master})")
        route = lines[0].split()
        source = route[route.index("src") + 1] if "src" in route[:-1] else None
        address = source or _interface_address(lines[1:], ifname)
        if address is None:
            raise ValueError(f"interface {ifname} has no address")
        return Endpoint(ifname, address)


@dataclass
class NodeState:
    """What the controller knows of a node before and while it is measured."""
    name: str
    endpoint: Endpoint | None = None
    port: int = 0
    has_python: bool = False          # the collective's Python exists there
    problem: str | None = None        # why it cannot be measured
    unreachable: bool = False         # SSH itself failed

    def as_dict(self) -> dict:
        return {"name": self.name, "interface": self.endpoint and self.endpoint.ifname,
                "address": self.endpoint and self.endpoint.address, "port": self.port,
                "unreachable": self.unreachable, "problem": self.problem}


def inspect_nodes(sessions: dict[str, HostSession], config: TrainConfig,
                  forks: int) -> dict[str, NodeState]:
    """Every node's endpoint and Python, one round trip each (at most `forks` at once)."""
    def one(node: Host) -> NodeState:
        state = NodeState(node.name, port=node.vars.get("rendezvous_port")
                          or DEFAULT_RENDEZVOUS_PORT)
        endpoint = TrainingEndpoint(config.master.address, chosen_interface(config.env[node.name]))
        try:
            values = sessions[node.name].gather([endpoint, Executable(config.python)])
        except HostUnreachable as exc:
            state.problem, state.unreachable = str(exc), True
        except ValueError as exc:
            state.problem = str(exc)
        else:
            state.endpoint, state.has_python = values[endpoint], values[Executable(config.python)]
        return state

    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(config.nodes)))) as pool:
        return {state.name: state for state in pool.map(one, config.nodes)}
