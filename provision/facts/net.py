"""Network facts for training: which interface reaches the master, and whether a port is free."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from provision.facts.base import Fact

# One line of `ip -o addr show`: "4: eth0    inet 192.0.2.2/24 brd ... scope global eth0\ ...".
_ADDR_LINE = re.compile(r"^\d+:\s+(?P<ifname>\S+)\s+inet6?\s+(?P<address>[^/\s]+)")


@dataclass(frozen=True)
class RouteInterface(Fact):
    """The network interface this host uses to reach `destination` (an address or host name).

    Parses to the interface name, or None when the host has no route to the destination (or
    cannot resolve it); a host without iproute2 is an error.
    """

    destination: str

    def command(self) -> str:
        # `ip route get` takes addresses only; resolve names the way this host does. A local
        # destination routes via lo, so the address list is printed too (see parse).
        return (
            f"d={shlex.quote(self.destination)}; "
            "a=$(getent ahosts \"$d\" | awk 'NR == 1 { print $1 }'); "
            "ip -o route get \"${a:-$d}\" && ip -o addr show"
        )

    def parse(self, stdout: str, rc: int) -> str | None:
        if rc == 127:
            raise ValueError(f"cannot find the route to {self.destination}: "
                             "`ip` (iproute2) is not installed")
        lines = stdout.splitlines()
        if rc != 0 or not lines:
            return None
        route = lines[0].split()
        if "dev" not in route or route.index("dev") + 1 >= len(route):
            return None
        device = route[route.index("dev") + 1]
        if route[0] != "local":
            return device
        # "local 10.0.0.1 dev lo ...": the destination is this host itself, and lo is not what the
        # other nodes reach it on; the interface that carries the address is.
        address = route[1]
        for line in lines[1:]:
            match = _ADDR_LINE.match(line)
            if match and match["address"] == address:
                return match["ifname"]
        return device


@dataclass(frozen=True)
class PortFree(Fact):
    """Whether no TCP socket on this host listens on `port` (on any address).

    Parses to True (free) or False (taken); ValueError when `ss` could not run.
    """

    port: int

    def command(self) -> str:
        return "ss -Htln"

    def parse(self, stdout: str, rc: int) -> bool:
        if rc != 0:
            raise ValueError(f"cannot list listening TCP sockets: `ss -Htln` exited with {rc}")
        wanted = str(self.port)
        for line in stdout.splitlines():
            fields = line.split()
            # Fields: state, recv-q, send-q, local "addr:port" (addr may be [v6] or have %iface).
            if len(fields) >= 4 and fields[3].rpartition(":")[2] == wanted:
                return False
        return True
