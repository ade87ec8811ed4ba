"""The lab's network: one Linux bridge in the root namespace, one netns + veth pair per host.

Every name starts with the lab name followed by '-', and lab names contain no '-', so one lab's
interfaces and namespaces can never be mistaken for another lab's. The bridge's alias records the
lab directory that owns it. Nothing routes off the bridge: hosts get no default route and the
bridge has forwarding off.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provision.errors import LabError

DEFAULT_SUBNET = "10.213.0.0/24"
FIRST_HOST_OFFSET = 11        # hosts are .11, .12, ...; the bridge (the controller) is .1
HOST_IFNAME = "eth0"


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(text)
    except ValueError as exc:
        raise LabError(f"subnet {text!r} is not a network address: {exc}") from exc
    if network.version != 4 or not network.is_private or network.prefixlen > 28:
        raise LabError(f"subnet {text} must be a private IPv4 network of at least /28 "
                       "(e.g. 10.213.0.0/24)")
    return network


def bridge_name(lab: str) -> str:
    return f"{lab}-br"


def veth_name(lab: str, index: int) -> str:
    return f"{lab}-v{index}"


def netns_name(lab: str, host: str) -> str:
    return f"{lab}-{host}"


def bridge_alias(lab_dir: Path) -> str:
    return f"provision-lab {lab_dir}"


def mac_address(interface_address: str) -> str:
    """A fixed, locally administered MAC per IPv4 address: a restarted host keeps its MAC, so the
    other hosts' ARP caches stay right (a new random MAC goes unanswered until they expire)."""
    address = ipaddress.IPv4Interface(interface_address).ip
    return "02:00:" + ":".join(f"{byte:02x}" for byte in address.packed)


@dataclass(frozen=True)
class HostLink:
    netns: str
    veth: str
    address: str   # "10.213.0.11/24"


def ip(ip_path: str, *args: str, batch: str | None = None) -> str:
    argv = [ip_path, *args] + (["-batch", "-"] if batch is not None else [])
    done = subprocess.run(argv, input=batch, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def links(ip_path: str) -> dict[str, str]:
    """Every interface of the root namespace -> its alias ('' when none)."""
    return {link["ifname"]: link.get("ifalias", "")
            for link in json.loads(ip(ip_path, "-j", "link", "show") or "[]")}


def netns_list(ip_path: str) -> list[str]:
    return [ns["name"] for ns in json.loads(ip(ip_path, "-j", "netns", "list") or "[]")]


def check_subnet_free(ip_path: str, subnet: ipaddress.IPv4Network, bridge: str) -> None:
    """Refuse a subnet that any route on the machine (other than our own bridge's) overlaps."""
    routes = json.loads(ip(ip_path, "-j", "-4", "route", "show", "table", "all") or "[]")
    for route in routes:
        dst, dev = route.get("dst", ""), route.get("dev", "")
        if dst == "default" or dev == bridge:
            continue
        try:
            network = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if network.overlaps(subnet):
            raise LabError(f"subnet {subnet} is already routed on this machine "
                           f"({dst} dev {dev or '?'}); choose another --subnet")


def ensure_bridge(ip_path: str, bridge: str, address: str, alias: str) -> None:
    """Create the bridge with its address, or reuse it if it is this lab's; refuse a stranger's."""
    existing = links(ip_path)
    if bridge in existing and existing[bridge] != alias:
        owner = existing[bridge] or "no owner recorded"
        raise LabError(f"interface {bridge} already exists and is not this lab's ({owner}); "
                       f"choose another lab name")
    if bridge not in existing:
        ip(ip_path, batch=f"link add {bridge} address {mac_address(address)} type bridge\n"
                          f"link set {bridge} alias {json.dumps(alias)}\n")
    # Even where the machine forwards IPv4, nothing that arrives on the bridge is routed on.
    Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").write_text("0\n")
    assigned = json.loads(ip(ip_path, "-j", "-4", "addr", "show", "dev", bridge) or "[]")
    have = {f"{a['local']}/{a['prefixlen']}" for entry in assigned
            for a in entry.get("addr_info", [])}
    if address not in have:
        ip(ip_path, "addr", "add", address, "dev", bridge)
    ip(ip_path, "link", "set", bridge, "up")


def add_hosts(ip_path: str, bridge: str, hosts: list[HostLink]) -> None:
    """Create each host's netns and veth pair (eth0 inside), plug it into the bridge, address it."""
    if not hosts:
        return
    ip(ip_path, batch="".join(
        f"netns add {h.netns}\n"
        f"link add {h.veth} type veth peer name {HOST_IFNAME} address {mac_address(h.address)}"
        f" netns {h.netns}\n"
        f"link set {h.veth} master {bridge} up\n" for h in hosts))
    for h in hosts:
        ip(ip_path, "-n", h.netns, batch=f"link set lo up\n"
                                         f"addr add {h.address} dev {HOST_IFNAME}\n"
                                         f"link set {HOST_IFNAME} up\n")


def remove(ip_path: str, netns: list[str], veths: list[str], bridge: str | None = None) -> None:
    """Delete those of the given namespaces and interfaces that exist; the rest is already gone."""
    existing_links, existing_netns = links(ip_path), set(netns_list(ip_path))
    lines = [f"link del {v}\n" for v in veths if v in existing_links]
    lines += [f"netns del {n}\n" for n in netns if n in existing_netns]
    if bridge and bridge in existing_links:
        lines.append(f"link del {bridge}\n")
    if lines:
        ip(ip_path, batch="".join(lines))


def leftovers(ip_path: str, lab: str, host_prefix: str) -> tuple[list[str], list[str]]:
    """Namespaces and veths named like this lab's hosts: what a crashed run may have left."""
    ns_pattern = re.compile(rf"{re.escape(netns_name(lab, host_prefix))}\d+")
    veth_pattern = re.compile(rf"{re.escape(lab)}-v\d+")
    return ([n for n in netns_list(ip_path) if ns_pattern.fullmatch(n)],
            [v for v in links(ip_path) if veth_pattern.fullmatch(v)])


@dataclass(frozen=True)
class LabNetwork:
    """One lab's addresses, bridge and host links: what `up` creates and `down` removes."""

    lab: str
    dir: Path            # the bridge's alias names it as the owner
    subnet: ipaddress.IPv4Network
    host_prefix: str

    @property
    def bridge(self) -> str:
        return bridge_name(self.lab)

    @property
    def capacity(self) -> int:
        """How many hosts the subnet holds (veth names allow 3 digits)."""
        return min(self.subnet.num_addresses - FIRST_HOST_OFFSET - 1, 999)

    def address(self, index: int) -> str:
        """The address of the host at 0-based `index`."""
        return str(self.subnet.network_address + FIRST_HOST_OFFSET + index)

    def netns(self, host: str) -> str:
        return netns_name(self.lab, host)

    def veth(self, address: str) -> str:
        index = int(ipaddress.ip_address(address)) - int(self.subnet.network_address)
        return veth_name(self.lab, index - FIRST_HOST_OFFSET + 1)

    def set_up(self, ip_path: str) -> None:
        """The bridge, with the controller's address, on a subnet nothing else routes."""
        check_subnet_free(ip_path, self.subnet, self.bridge)
        ensure_bridge(ip_path, self.bridge, f"{self.subnet.network_address + 1}/"
                      f"{self.subnet.prefixlen}", bridge_alias(self.dir))

    def remove_leftovers(self, ip_path: str, keep: dict[str, str]) -> None:
        """Pieces of a crashed run, but those of the running hosts in `keep` (name -> address):
        of the hosts to start, and of hosts the lab no longer has."""
        stale_netns, stale_veths = leftovers(ip_path, self.lab, self.host_prefix)
        kept = {self.netns(n) for n in keep} | {self.veth(a) for a in keep.values()}
        remove(ip_path, [n for n in stale_netns if n not in kept],
               [v for v in stale_veths if v not in kept])

    def connect(self, ip_path: str, hosts: dict[str, str]) -> None:
        """A netns and a veth on the bridge for each host (name -> address)."""
        prefix = f"/{self.subnet.prefixlen}"
        add_hosts(ip_path, self.bridge, [HostLink(self.netns(name), self.veth(address),
                                                  address + prefix)
                                         for name, address in hosts.items()])

    def tear_down(self, ip_path: str, hosts: list[str]) -> None:
        """Remove the hosts' netns, every leftover and the bridge, unless another lab directory
        owns the bridge."""
        if links(ip_path).get(self.bridge) in (None, bridge_alias(self.dir)):
            stale_netns, stale_veths = leftovers(ip_path, self.lab, self.host_prefix)
            remove(ip_path, sorted(set(stale_netns) | {self.netns(h) for h in hosts}),
                   stale_veths, self.bridge)
