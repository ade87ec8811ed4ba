"""RouteInterface and PortFree: parsers fed with captured output, and commands run for real here."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess

import pytest

from provision.facts.net import PortFree, RouteInterface

# Captured on a Debian 12 box (iproute2 6.1) with `ip -o -4 addr show` / `ip -o addr show`.
ADDRS = (
    "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
    "4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever "
    "preferred_lft forever\n"
)
# A lab host: a veth with an IPv4 and an IPv6 address (crafted in iproute2's format).
LAB_ADDRS = (
    "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
    "1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever\n"
    "7: eth0    inet 10.213.0.11/24 brd 10.213.0.255 scope global eth0\\       valid_lft forever "
    "preferred_lft forever\n"
    "7: eth0    inet6 fd00::11/64 scope global \\       valid_lft forever preferred_lft forever\n"
)


@pytest.mark.parametrize("route, addrs, expected", [
    # captured: `ip -o route get 127.0.0.1`, `ip -o route get 8.8.8.8`, `ip -o route get 192.0.2.2`
    ("local 127.0.0.1 dev lo src 127.0.0.1 uid 0 \\    cache <local> ", ADDRS, "lo"),
    ("8.8.8.8 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \\    cache ", ADDRS, "eth0"),
    ("local 192.0.2.2 dev lo src 192.0.2.2 uid 0 \\    cache <local> ", ADDRS, "eth0"),
    # a lab node reaching the master on its bridge, and the master reaching itself
    ("10.213.0.11 dev eth0 src 10.213.0.12 uid 0 \\    cache ", LAB_ADDRS, "eth0"),
    ("local 10.213.0.11 dev lo table local src 10.213.0.11 uid 0 \\    cache <local> ",
     LAB_ADDRS, "eth0"),
    ("local fd00::11 from :: dev lo table local proto kernel src fd00::11 metric 0 pref medium",
     LAB_ADDRS, "eth0"),
    ("fd00::12 from :: dev eth0 proto kernel src fd00::11 metric 256 pref medium",
     LAB_ADDRS, "eth0"),
    # an InfiniBand fabric reached through a gateway
    ("172.16.4.20 via 172.16.0.1 dev ib0 src 172.16.0.9 uid 0 \\    cache ", ADDRS, "ib0"),
])
def test_route_interface_parse(route: str, addrs: str, expected: str) -> None:
    assert RouteInterface("x").parse(route + "\n" + addrs, 0) == expected


def test_route_interface_is_none_without_a_route() -> None:
    # `ip route get` prints "RTNETLINK answers: Network is unreachable" on stderr and exits 2.
    assert RouteInterface("203.0.113.9").parse("", 2) is None


def test_route_interface_without_iproute2_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"`ip` \(iproute2\) is not installed"):
        RouteInterface("10.0.0.1").parse("", 127)


def test_route_interface_command_quotes_the_destination() -> None:
    command = RouteInterface("x'; id; '").command()
    assert command.startswith("d='x'\"'\"'; id; '\"'\"''; ")


# Captured `ss -Htln` with listeners on several address forms; the last two lines are
# systemd-resolved's and a wildcard listener as older ss versions print it.
SS_OUTPUT = """\
LISTEN 0      128    127.0.0.1:29500 0.0.0.0:*
LISTEN 0      128    192.0.2.2:29400 0.0.0.0:*
LISTEN 0      128      0.0.0.0:2024  0.0.0.0:*
LISTEN 0      128      0.0.0.0:8080  0.0.0.0:*
LISTEN 0      128        [::1]:631      [::]:*
LISTEN 0      128         [::]:22       [::]:*
LISTEN 0      4096 127.0.0.53%lo:53     0.0.0.0:*
LISTEN 0      128            *:9100        *:*
"""


@pytest.mark.parametrize("port, free", [
    (29500, False), (29400, False), (22, False), (631, False), (53, False), (9100, False),
    (2950, True),  # a prefix of a taken port is still free
    (29501, True), (1, True),
])
def test_port_free_parse(port: int, free: bool) -> None:
    assert PortFree(port).parse(SS_OUTPUT, 0) is free


def test_port_free_tolerates_a_header_line() -> None:
    header = "State  Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n"
    assert PortFree(29500).parse(header, 0) is True


def test_port_free_without_ss_is_an_error() -> None:
    with pytest.raises(ValueError, match="`ss -Htln` exited with 127"):
        PortFree(29500).parse("", 127)


def _run(command: str) -> tuple[str, int]:
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10,
                            check=False)
    return result.stdout, result.returncode


needs_ip = pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed")


@needs_ip
def test_route_interface_on_this_machine() -> None:
    fact = RouteInterface("127.0.0.1")
    assert fact.parse(*_run(fact.command())) == "lo"


@needs_ip
def test_route_interface_to_this_machines_own_address_is_its_nic_not_lo() -> None:
    addrs, _ = _run("ip -o -4 addr show scope global")
    match = re.search(r"^\d+:\s+(\S+)\s+inet\s+([\d.]+)/", addrs, re.MULTILINE)
    if match is None:
        pytest.skip("this machine has no global IPv4 address")
    ifname, address = match.groups()
    fact = RouteInterface(address)
    assert fact.parse(*_run(fact.command())) == ifname


@needs_ip
def test_route_interface_for_an_unresolvable_name_is_none() -> None:
    fact = RouteInterface("no-such-host.invalid")
    assert fact.parse(*_run(fact.command())) is None


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss is not installed")
def test_port_free_on_this_machine() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fact = PortFree(port)
        assert fact.parse(*_run(fact.command())) is False
    assert fact.parse(*_run(fact.command())) is True
