"""Which hosts may pass files to which: exactly where the firewall role opens training ports."""

from __future__ import annotations

import shutil

import pytest
import yaml

from provision.inventory import load_inventory
from provision.relay.firewall import firewall_peers
from provision.relay.peers import port_list
from provision.roles import ROLES_DIR
from provision.setup import known_settings


def peers_of(tmp_path, vars: dict | None = None, training: list[str] | None = None,
             roles_dir=ROLES_DIR):
    hosts = {"t1": "10.0.0.11", "t2": "10.0.0.12", "t3": "10.0.0.13", "out": "10.0.0.99"}
    document = {"all": {"vars": vars or {},
                        "hosts": {n: {"ansible_host": a} for n, a in hosts.items()}}}
    if training is not None:
        document["all"]["children"] = {"training": {"hosts": {n: {} for n in training}}}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(document))
    inventory = load_inventory(path, known_settings())
    return firewall_peers(inventory, list(inventory.hosts.values()), roles_dir)


def test_the_training_hosts_serve_each_other_and_only_each_other(tmp_path):
    peers = peers_of(tmp_path, training=["t1", "t2", "t3"])
    assert peers.ports == {"t1": (29500,), "t2": (29500,), "t3": (29500,)}
    assert peers.may_serve("t1", "t2") and peers.may_serve("t3", "t1")
    assert not peers.may_serve("t1", "t1")
    assert not peers.may_serve("t1", "out") and not peers.served("out")   # not open to it
    assert not peers.may_serve("out", "t1")            # its firewall opened nothing


def test_cluster_cidr_opens_the_ports_to_the_whole_network(tmp_path):
    peers = peers_of(tmp_path, {"cluster_cidr": "10.0.0.0/24"}, training=["t1", "t2", "t3"])
    assert peers.may_serve("t1", "out") and not peers.may_serve("out", "t1")


def test_the_extra_ports_are_tried_after_the_rendezvous_port(tmp_path):
    peers = peers_of(tmp_path, {"rendezvous_port": 29600,
                                "firewall_extra_ports": ["29400", "40000-40100"]})
    assert peers.ports["t1"] == (29600, 29400, 40000, 40001, 40002, 40003)


def test_without_a_training_group_every_host_serves_every_host(tmp_path):
    peers = peers_of(tmp_path)
    assert peers.may_serve("out", "t1") and peers.may_serve("t1", "out")


def test_without_a_firewall_role_no_host_serves(tmp_path):
    roles = tmp_path / "roles"
    shutil.copytree(ROLES_DIR / "conda", roles / "conda")
    assert peers_of(tmp_path, roles_dir=roles).ports == {}


@pytest.mark.parametrize("values, ports", [
    (["29500"], (29500,)), ([29500, "29500"], (29500,)), (["1-2"], (1, 2)),
    (["x", "5-y"], ()), ([str(p) for p in range(1, 20)], tuple(range(1, 9)))])
def test_port_list(values, ports):
    assert port_list(values) == ports
