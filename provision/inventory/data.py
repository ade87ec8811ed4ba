"""What the readers build: groups, hosts and their vars as Ansible's inventory holds them, each
var checked where it is written; then the merge (Ansible's precedence and host order) into an
Inventory.

The readers (YAML, INI, host lists, group_vars/ and host_vars/ files) only call add_group,
add_child, add_host and put; everything Ansible decides afterwards (which groups hang below
`all`, who is `ungrouped`, depths, the order of hosts, which var wins) is decided here, once.

Longer than ~300 lines because it is the one place where Ansible's rules are decided; the
readers (YAML, INI, vars files) only feed it.
"""

from __future__ import annotations

import ipaddress
import re
from itertools import chain
from pathlib import Path
from typing import Any, Callable

from provision.inventory.model import Group, Host, Inventory
from provision.inventory.yamlfile import VAULTED
from provision.settings import ALIASES, Setting, check_value, suggest

# Ansible's names for provision's settings, the legacy ones (Vagrant still writes them) too.
ANSIBLE_NAMES = {**ALIASES, "ansible_ssh_host": "address", "ansible_ssh_user": "user",
                 "ansible_ssh_port": "port"}
# Secrets never live in the inventory: an SSH key (or the agent) logs in, -K gives sudo's password.
SECRETS = frozenset({"ansible_password", "ansible_ssh_pass", "ansible_ssh_password",
                     "ansible_become_pass", "ansible_become_password", "ansible_sudo_pass",
                     "ansible_sudo_password", "ansible_su_pass", "ansible_su_password"})
# What Ansible reads as a boolean (an INI file has no other way to write one).
BOOLEANS = {**dict.fromkeys(("yes", "on", "true", "y", "t", "1"), True),
            **dict.fromkeys(("no", "off", "false", "n", "f", "0"), False)}
# Names with nothing a shell, a path or a template could make anything of. A host may also be
# named by its IP address (IPv6 too).
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
GROUP_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
MAX_HOSTS = 100_000           # bounds the work one inventory can ask for (ranges make it cheap)


class Layer:
    """One entity's vars from one place (the inventory files, or one group_vars/ file set):
    as written (what ansible-inventory shows) and under provision's names."""

    __slots__ = ("raw", "ours", "keys")

    def __init__(self) -> None:
        self.raw: dict[str, Any] = {}
        self.ours: dict[str, Any] = {}
        self.keys: dict[str, str] = {}      # our name -> the key that set it


class GroupRecord:
    __slots__ = ("name", "where", "vars", "children", "parents", "hosts", "members", "priority")

    def __init__(self, name: str, where: str):
        self.name, self.where = name, where
        self.vars = Layer()
        self.children: list[str] = []
        self.parents: list[str] = []
        self.hosts: list[str] = []          # its own hosts, in the order they were added
        self.members: set[str] = set()
        self.priority = 1


class HostRecord:
    __slots__ = ("name", "where", "vars", "groups")

    def __init__(self, name: str, where: str):
        self.name, self.where = name, where
        self.vars = Layer()
        self.groups: list[str] = []         # the groups that list it


def valid_host_name(name: str) -> bool:
    if HOST_NAME_RE.fullmatch(name):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class InventoryData:
    def __init__(self, known: dict[str, Setting], problems: list[str], warnings: list[str]):
        self.known = known
        self.known_names = list(known)
        self.problems = problems
        self.warnings = warnings
        self.groups: dict[str, GroupRecord] = {}
        self.hosts: dict[str, HostRecord] = {}
        self._hints: dict[str, str | None] = {}
        for name in ("all", "ungrouped"):
            self.groups[name] = GroupRecord(name, "")
        self.groups["all"].children.append("ungrouped")
        self.groups["ungrouped"].parents.append("all")

    # -- building ----------------------------------------------------------------------------
    def add_group(self, name: str, where: str) -> GroupRecord | None:
        group = self.groups.get(name)
        if group is None:
            if not GROUP_NAME_RE.fullmatch(name):
                self.problems.append(f"{where}: group name {name!r} is not valid: use letters, "
                                     "digits, '.', '_' and '-'")
                return None
            group = self.groups[name] = GroupRecord(name, where)
        return group

    def add_child(self, parent: str, child: str, where: str) -> None:
        group, sub = self.groups[parent], self.groups[child]
        if child in group.children:
            return
        if child == "all":
            self.problems.append(f"{where}: group 'all' cannot be a child of {parent!r}")
            return
        if child == parent or self._reaches(child, parent):
            chain_up = [parent]         # up to a root: the parent graph has no cycle
            while self.groups[chain_up[-1]].parents and len(chain_up) <= len(self.groups):
                chain_up.append(self.groups[chain_up[-1]].parents[0])
            self.problems.append(f"{where}: group {child!r} contains itself "
                                 f"({' -> '.join([*reversed(chain_up), child])})")
            return
        group.children.append(child)
        sub.parents.append(parent)

    def _reaches(self, start: str, target: str) -> bool:
        todo, seen = [start], {start}
        while todo:
            for child in self.groups[todo.pop()].children:
                if child == target:
                    return True
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return False

    def add_host(self, name: str, group: str, where: str, port: int | None = None) \
            -> HostRecord | None:
        host = self.hosts.get(name)
        if host is None:
            if not valid_host_name(name):
                self.problems.append(f"{where}: host name {name!r} is not valid: use letters, "
                                     "digits, '.', '_' and '-', or an IP address")
                return None
            host = self.hosts[name] = HostRecord(name, where)
            if port is not None:     # Ansible: a host's name:port counts where it first appears
                self.put(host.vars, "ansible_port", port, where)
        members = self.groups[group]
        if name not in members.members:
            members.members.add(name)
            members.hosts.append(name)
            host.groups.append(group)
        return host

    def put_group_var(self, group: GroupRecord, key: str, value: Any, where: str) -> None:
        if key == "ansible_group_priority":   # the group's rank among its siblings, not a var
            try:
                group.priority = int(value)
            except (TypeError, ValueError):
                self.problems.append(f"{where}: ansible_group_priority: must be an integer, "
                                     f"got {value!r}")
            return
        self.put(group.vars, key, value, where)

    def put(self, layer: Layer, key: str, value: Any, where: str) -> None:
        """Check one var where it is written and record it (a later value replaces an
        earlier one, as in Ansible); a bad value is a problem naming file:line and key."""
        if key in SECRETS:
            self.problems.append(f"{where}: {key}: a password is refused in the inventory (secrets "
                                 "never live there): log in with an SSH key or the agent, and "
                                 "give sudo's password with -K (--ask-become-pass)")
            return
        if value is VAULTED:
            self.warnings.append(f"{where}: {key}: encrypted with ansible-vault; left out "
                                 "(provision reads no secrets from the inventory)")
            return
        name = ANSIBLE_NAMES.get(key, key)
        ours = value
        setting = self.known.get(name)
        if setting is not None:
            if setting.type == "bool" and isinstance(value, (str, int)) \
                    and not isinstance(value, bool):
                ours = BOOLEANS.get(str(value).lower(), value)
            problem = check_value(setting, ours)
            if problem:
                self.problems.append(f"{where}: {key}: {problem}")
                return
        elif not key.startswith("ansible_"):
            hint = self._hints.get(key, "")
            if hint == "":
                hint = self._hints[key] = suggest(key, self.known_names)
            if hint:
                self.warnings.append(f"{where}: unknown setting {key!r} (did you mean {hint!r}?); "
                                     "kept as a plain var")
        previous = layer.keys.get(name)
        if previous is not None and previous != key and layer.ours[name] != ours:
            self.problems.append(f"{where}: {key} and its alias {previous} both set {name!r}, "
                                 f"to {layer.ours[name]!r} and {ours!r}")
            return
        layer.raw[key] = value
        layer.ours[name] = ours
        layer.keys[name] = key

    # -- what Ansible decides after reading every source --------------------------------------
    def reconcile(self) -> None:
        """Groups without a parent hang below `all`; a host in no group but `all` is
        `ungrouped`, and only such a host."""
        for name, group in self.groups.items():
            if name != "all" and not group.parents:
                self.add_child("all", name, group.where)
        ungrouped = self.groups["ungrouped"]
        for name, host in self.hosts.items():
            others = [g for g in host.groups if g not in ("all", "ungrouped")]
            if others and name in ungrouped.members:
                ungrouped.members.discard(name)
                ungrouped.hosts.remove(name)
                host.groups.remove("ungrouped")
            elif not others and name not in ungrouped.members:
                self.add_host(name, "ungrouped", host.where)

    def depths(self) -> dict[str, int]:
        """Each group's longest path from `all` (Ansible's depth: deeper groups win)."""
        indegree = {name: len(g.parents) for name, g in self.groups.items()}
        depth = dict.fromkeys(self.groups, 0)
        ready = ["all"]
        while ready:
            name = ready.pop()
            for child in self.groups[name].children:
                depth[child] = max(depth[child], depth[name] + 1)
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        return depth

    def members(self, name: str) -> list[str]:
        """Every host of a group, Ansible's order: its own hosts, then level by level its
        descendants' (children in order; Ansible's own order past the first level follows set
        iteration, this one is the same wherever Ansible's is defined)."""
        ordered, level, seen = [name], [name], {name}
        while level:
            following = []
            for group in level:
                for child in self.groups[group].children:
                    if child not in seen:
                        seen.add(child)
                        ordered.append(child)
                        following.append(child)
            level = following
        if len(ordered) == 1:
            return list(self.groups[name].hosts)
        return list(dict.fromkeys(chain.from_iterable(self.groups[g].hosts for g in ordered)))

    def build(self, path: Path, sources: tuple[str, ...], files: tuple[Path, ...],
              group_files: list[dict[str, Layer]], host_files: list[dict[str, Layer]],
              extra: tuple[dict[str, Any], dict[str, Any]],
              ssh_hostname: Callable[[str], str | None]) -> Inventory:
        """The Inventory, vars merged in Ansible's precedence: all < groups by (depth,
        ansible_group_priority, name) < group_vars/all < group_vars/<group> (same order, each
        source in turn) < the host's own vars < host_vars/<host> < -e."""
        depth = self.depths()
        groups = self.groups
        ancestors: dict[str, frozenset[str]] = {}

        def lineage(name: str) -> frozenset[str]:
            found = ancestors.get(name)
            if found is None:
                found = frozenset({name}).union(*(lineage(p) for p in groups[name].parents))
                ancestors[name] = found
            return found

        for name in sorted(groups, key=depth.get):     # parents first: shallow recursion
            lineage(name)
        prefixes: dict[tuple[str, ...], tuple[tuple[str, ...], dict, dict]] = {}

        def prefix(direct: tuple[str, ...]) -> tuple[tuple[str, ...], dict, dict]:
            cached = prefixes.get(direct)
            if cached is None:
                names = frozenset().union(*(ancestors[g] for g in direct)) - {"all"}
                ordered = tuple(sorted(names, key=lambda g: (depth[g], groups[g].priority, g)))
                raw: dict[str, Any] = {}
                ours: dict[str, Any] = {}
                layers = [groups["all"].vars, *(groups[g].vars for g in ordered)]
                for by_group in group_files:
                    layers.append(by_group.get("all"))
                for by_group in group_files:
                    layers.extend(by_group.get(g) for g in ordered)
                for layer in layers:
                    if layer is not None:
                        raw.update(layer.raw)
                        ours.update(layer.ours)
                cached = prefixes[direct] = (ordered, raw, ours)
            return cached

        extra_raw, extra_ours = extra
        hosts: dict[str, Host] = {}
        for name in self.members("all"):
            record = self.hosts[name]
            ordered, raw, ours = prefix(tuple(record.groups))
            raw, ours = dict(raw), dict(ours)
            for layer in (record.vars, *(by_host.get(name) for by_host in host_files)):
                if layer is not None:
                    raw.update(layer.raw)
                    ours.update(layer.ours)
            raw.update(extra_raw)
            ours.update(extra_ours)
            alias = None
            address = ours.get("address")
            if address is None:
                address = ssh_hostname(name)
                if address is not None:
                    alias = name
                else:
                    address = name
            hosts[name] = Host(
                name=name, address=address, port=ours.get("port", 22), user=ours.get("user"),
                key_file=ours.get("ssh_key"), become=ours.get("become", False), vars=ours,
                groups=("all", *ordered), ssh_alias=alias, ansible_vars=raw, where=record.where)
        result = {
            name: Group(name, self.members(name), list(g.children), dict(g.vars.ours),
                        depth[name], list(g.hosts), g.priority)
            for name, g in groups.items()}
        return Inventory(path=path, hosts=hosts, groups=result, sources=sources, files=files,
                         warnings=self.warnings)
