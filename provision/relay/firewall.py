"""The relay's peers as the firewall role of a run opens the training ports (see peers.py)."""

from __future__ import annotations

from pathlib import Path

from provision.errors import RoleError
from provision.inventory import Host, Inventory
from provision.relay.peers import Peers, networks, port_list
from provision.roles import ROLES_DIR, evaluate, load_role, render, template_variables

FIREWALL_ROLE, FIREWALL_OP = "firewall", "firewall_open"


def firewall_peers(inventory: Inventory, hosts: list[Host],
                   roles_dir: Path = ROLES_DIR) -> Peers:
    """The peers among `hosts` as the firewall role of `roles_dir` opens their ports."""
    addresses = {h.name: h.address for h in hosts}
    try:
        role = load_role(FIREWALL_ROLE, roles_dir)
    except RoleError:
        return Peers(addresses)      # no firewall role: no port was made safe
    tasks = [t for t in role.tasks if t.op.name == FIREWALL_OP]
    ports, open_to = {}, {}
    for host in hosts:
        variables = template_variables(inventory, host, role)
        for task in tasks:
            try:
                if task.when is not None and not evaluate(task.when, variables):
                    continue
                args = render(task.args, variables)
            except Exception:  # noqa: BLE001 -- jinja2's errors: the role fails the host too
                continue
            host_ports = port_list(args.get("ports") or [])
            if host_ports:
                ports[host.name] = host_ports
                open_to[host.name] = networks(args.get("sources") or [])
    return Peers(addresses, ports, open_to)
