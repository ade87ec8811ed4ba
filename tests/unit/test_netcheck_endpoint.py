"""TrainingEndpoint: the interface train would use and the address peers measure it at."""

from __future__ import annotations

import pytest

from provision.netcheck.endpoint import Endpoint, TrainingEndpoint, chosen_interface

# `ip -o addr show` in iproute2's format (a lab host with IPv4 and IPv6; an IB port).
ADDRS = (
    "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
    "7: eth0    inet 10.213.0.12/24 brd 10.213.0.255 scope global eth0\\       valid_lft forever "
    "preferred_lft forever\n"
    "7: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n"
    "9: ib0    inet6 fe80::2/64 scope link \\       valid_lft forever preferred_lft forever\n"
    "9: ib0    inet6 fd00::9/64 scope global \\       valid_lft forever preferred_lft forever\n"
)


@pytest.mark.parametrize("route, expected", [
    # a node reaching the master on the bridge: the route's source address
    ("10.213.0.11 dev eth0 src 10.213.0.12 uid 0 \\    cache ", Endpoint("eth0", "10.213.0.12")),
    # the master itself: lo is not what peers reach; eth0 holds the address
    ("local 10.213.0.12 dev lo table local src 10.213.0.12 uid 0 \\    cache <local> ",
     Endpoint("eth0", "10.213.0.12")),
    # no src in the route: the interface's first IPv4 address
    ("10.213.0.11 dev eth0 uid 0", Endpoint("eth0", "10.213.0.12")),
])
def test_route_endpoint(route, expected):
    assert TrainingEndpoint("10.213.0.11").parse(route + "\n" + ADDRS, 0) == expected


def test_no_route_to_the_master():
    with pytest.raises(ValueError, match="no route to the master"):
        TrainingEndpoint("203.0.113.9").parse("", 2)


def test_named_interface_takes_its_address_not_the_routes():
    fact = TrainingEndpoint("10.213.0.11", "eth0")
    assert fact.command() == "ip -o addr show dev eth0"
    assert fact.parse(ADDRS, 0) == Endpoint("eth0", "10.213.0.12")


def test_named_interface_with_only_ipv6_skips_the_link_local_address():
    assert TrainingEndpoint("x", "ib0").parse(ADDRS, 0) == Endpoint("ib0", "fd00::9")


@pytest.mark.parametrize("stdout, rc, message", [
    ('Device "eth9" does not exist.\n', 1, "does not exist or has no address"),
    ("", 127, "iproute2"),
])
def test_named_interface_problems(stdout, rc, message):
    with pytest.raises(ValueError, match=message):
        TrainingEndpoint("x", "eth9").parse(stdout, rc)


def test_command_quotes_the_interface():
    assert "'eth0;id'" in TrainingEndpoint("x", "eth0;id").command()


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "ib0"}, "ib0"),
    ({"NCCL_SOCKET_IFNAME": "ib0"}, "ib0"),
    ({"GLOO_SOCKET_IFNAME": "eth1", "NCCL_SOCKET_IFNAME": "ib0"}, "eth1"),
    # NCCL's prefix/exclusion lists name no one interface: the route decides
    ({"NCCL_SOCKET_IFNAME": "^docker,lo"}, None),
    ({"NCCL_SOCKET_IFNAME": "=eth0"}, None),
])
def test_chosen_interface(env, expected):
    assert chosen_interface(env) == expected
