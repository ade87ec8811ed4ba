"""Which hosts may pass a file to which: only over what setup made safe (provision/relay/
firewall.py reads it from the firewall role).

The firewall role opens the training ports (`rendezvous_port`, `firewall_extra_ports`) on the
hosts of `firewall_group`, to the addresses in its sources (`firewall_sources`, `cluster_cidr`,
or the group's own addresses) only. So a host may serve a peer when the firewall role applies to
it and the peer's address is among its sources, and it listens on those ports only. The role's
own `when` and arguments are rendered, so this follows the role file, not a copy of it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

PORTS_PER_RANGE = 4      # a busy port (a job on it) moves the server on; a few suffice
MAX_PORTS = 8

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Peers:
    addresses: dict[str, str] = field(default_factory=dict)          # host -> address
    ports: dict[str, tuple[int, ...]] = field(default_factory=dict)  # server -> its ports
    open_to: dict[str, tuple[Network, ...]] = field(default_factory=dict)

    def may_serve(self, holder: str, receiver: str) -> bool:
        if holder == receiver or holder not in self.ports or receiver not in self.addresses:
            return False
        try:
            address = ipaddress.ip_address(self.addresses[receiver])
        except ValueError:
            return True      # a name: only the connection itself can tell
        return any(address.version == net.version and address in net
                   for net in self.open_to[holder])

    def served(self, receiver: str) -> bool:
        """Some host may serve `receiver`."""
        return any(self.may_serve(holder, receiver) for holder in self.ports)


def port_list(values: list) -> tuple[int, ...]:
    """'29500' and '40000-40100' -> ports, the first few of each range."""
    ports: list[int] = []
    for value in values:
        first, _, last = str(value).partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            continue
        ports += range(low, min(high, low + PORTS_PER_RANGE - 1) + 1)
    return tuple(dict.fromkeys(ports))[:MAX_PORTS]


def networks(values: list) -> tuple[Network, ...]:
    found = []
    for value in values:
        try:
            found.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            continue         # the firewall role refuses it too: nothing is open to it
    return tuple(found)
