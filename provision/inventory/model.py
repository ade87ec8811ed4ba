"""Host, Group and Inventory: what every command reads from a loaded inventory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from provision.errors import InventoryError
from provision.settings import suggest


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    become: bool = False
    # Fully merged variables under provision's names (ansible_host is `address`...), in Ansible's
    # precedence: all < parent group < child group < group_vars/ < host < host_vars/ < -e.
    vars: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # "all", then the host's groups and their ancestors, weakest first (the merge order).
    groups: tuple[str, ...] = ()
    # Set when the address comes from ~/.ssh/config (Host <name> / HostName): SSH then connects
    # by this name, so that entry's User, Port, IdentityFile and ProxyJump apply too.
    ssh_alias: str | None = None
    # The same merge under the names the inventory wrote (what ansible-inventory --list shows).
    ansible_vars: dict[str, Any] = field(default_factory=dict, compare=False, hash=False,
                                         repr=False)
    where: str = field(default="", compare=False)   # file:line of its first definition


@dataclass
class Group:
    name: str
    hosts: list[str]          # every member (its own hosts, then its children's), Ansible's order
    children: list[str]
    vars: dict[str, Any]      # the group's own inventory vars, provision's names
    depth: int = 0            # longest path from `all`
    direct_hosts: list[str] = field(default_factory=list)   # listed in the group itself
    priority: int = 1         # ansible_group_priority


@dataclass
class Inventory:
    path: Path                # the first source (the retry file goes next to it)
    hosts: dict[str, Host]    # Ansible's order for `all` (this is the node-rank order for training)
    groups: dict[str, Group]
    sources: tuple[str, ...] = ()       # every -i, in merge order
    files: tuple[Path, ...] = ()        # every file read: inventories, group_vars, host_vars
    warnings: list[str] = field(default_factory=list)

    def select(self, limit: str | None) -> list[Host]:
        """Hosts matching a comma-separated list of host and group names, in inventory order.
        Two selected hosts at one address and port are refused (one machine, run twice)."""
        if not limit:
            selected = list(self.hosts.values())
        else:
            wanted: set[str] = set()
            problems = []
            for term in (t.strip() for t in limit.split(",")):
                if not term:
                    continue
                if term in self.hosts:
                    wanted.add(term)
                elif term in self.groups:
                    if not self.groups[term].hosts:
                        problems.append(f"--limit: group {term!r} has no hosts")
                    wanted.update(self.groups[term].hosts)
                else:
                    hint = suggest(term, [*self.hosts, *self.groups])
                    problems.append(f"--limit: no host or group named {term!r}"
                                    + (f" (did you mean {hint!r}?)" if hint else ""))
            if problems:
                raise InventoryError(problems)
            selected = [h for name, h in self.hosts.items() if name in wanted]
        endpoints: dict[tuple[str, int], Host] = {}
        problems = []
        for host in selected:
            other = endpoints.setdefault((host.address, host.port), host)
            if other is not host:
                problems.append(f"{host.where or self.path}: hosts {other.name!r} and "
                                f"{host.name!r} both point at {host.address}:{host.port}")
        if problems:
            raise InventoryError(problems)
        return selected

    def digest(self) -> str:
        """sha256 over every file the inventory was read from (names and contents)."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(str(path).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"(unreadable)")
            digest.update(b"\0")
        return digest.hexdigest()

    def ansible_list(self, hosts: Iterable[Host] | None = None) -> dict[str, Any]:
        """The shape of `ansible-inventory --list`: every group reachable from `all` with its own
        hosts and its children (empty keys and empty groups left out), and `_meta.hostvars`,
        each host's merged vars under the names the inventory wrote."""
        chosen = list(self.hosts.values()) if hosts is None else list(hosts)
        available = {h.name for h in chosen}
        result: dict[str, Any] = {}
        for name, group in self.groups.items():     # every group hangs below `all`
            entry: dict[str, Any] = {}
            if name != "all":
                own = [h for h in group.direct_hosts if h in available]
                if own:
                    entry["hosts"] = own
            if group.children:
                entry["children"] = list(group.children)
            if entry:
                result[name] = entry
        result["_meta"] = {"hostvars": {h.name: dict(h.ansible_vars) for h in chosen
                                        if h.ansible_vars}}
        return result
