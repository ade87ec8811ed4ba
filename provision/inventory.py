"""Host, Group, Inventory and load_inventory(path): the Ansible YAML inventory shape, validated.

Every problem is collected with its file:line and reported at once (InventoryError), so a user
fixes an inventory in one pass instead of one error per run.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import paramiko
import yaml

from provision.errors import InventoryError
from provision.settings import ALIASES, CORE_SETTINGS, NAME_RE, Setting, check_value, suggest

GROUP_KEYS = ("hosts", "vars", "children")
INVALID = object()   # a value that could not be read (its problem is already reported)
# What an inventory's YAML may ask of the loader. Aliases are references, cheap to compose but
# expanded by every walk over the document: a few lines can name 10^8 nodes (an alias bomb), or
# a node can contain itself. Real inventories reuse blocks a few times per host at most.
MAX_ALIAS_GROWTH = 50          # expanded nodes per node written...
MAX_ALIAS_SLACK = 100_000      # ...beyond this many
MAX_DEPTH = 100                # nesting levels (groups within groups, vars within vars)
# Setting types whose -e value is read as YAML (numbers, booleans, lists, mappings).
TYPED_VALUES = ("int", "float", "bool", "port", "list", "dict")


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    become: bool = False
    # Fully merged variables: all.vars <- group vars (outer to inner) <- host vars.
    vars: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    groups: tuple[str, ...] = ()
    # Set when the address comes from ~/.ssh/config (Host <name> / HostName): SSH then connects
    # by this name, so that entry's User, Port, IdentityFile and ProxyJump apply too.
    ssh_alias: str | None = None


@dataclass
class Group:
    name: str
    hosts: list[str]          # direct and nested members, inventory order
    children: list[str]
    vars: dict[str, Any]
    depth: int = 0


@dataclass
class Inventory:
    path: Path
    hosts: dict[str, Host]    # inventory order (this is the node-rank order for training)
    groups: dict[str, Group]

    def select(self, limit: str | None) -> list[Host]:
        """Hosts matching a comma-separated list of host and group names, in inventory order."""
        if not limit:
            return list(self.hosts.values())
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
        return [h for name, h in self.hosts.items() if name in wanted]


class _Source:
    """A composed YAML document plus the problems found while walking it."""

    def __init__(self, path: Path, known: dict[str, Setting]):
        self.path = path
        self.known = known
        self.problems: list[str] = []
        self.constructor = yaml.SafeLoader("")

    def where(self, node: yaml.Node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}"

    def problem(self, node: yaml.Node, message: str) -> None:
        self.problems.append(f"{self.where(node)}: {message}")

    def value(self, node: yaml.Node, what: str = "value") -> Any:
        """The node's Python value, or INVALID (a problem reported at its line) for a tag the
        safe loader refuses (`!!python/object`, unknown tags) or a scalar its tag cannot read
        (`!!int abc`, `!!timestamp zz`)."""
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            # What a failed construction left half-done must not poison later values.
            self.constructor.constructed_objects.clear()
            self.constructor.recursive_objects.clear()
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            if isinstance(exc, yaml.YAMLError) and "constructor for the tag" in str(exc):
                self.problem(node, f"{what}: the tag {tag} is not allowed in an inventory")
            elif isinstance(node, yaml.ScalarNode):
                self.problem(node, f"{what}: {node.value!r} is not a valid {tag}")
            else:
                self.problem(node, f"{what}: cannot read it as {tag}: "
                                   f"{getattr(exc, 'problem', None) or exc}")
            return INVALID

    def items(self, node: yaml.Node, what: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) of a mapping; reports non-mappings and duplicate keys."""
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping")
            return
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node, f"{what}: key")
            if key is INVALID:
                continue
            if not isinstance(key, str):
                self.problem(key_node, f"{what}: key {key!r} must be a string")
                continue
            if key in seen:
                self.problem(key_node, f"{what}: duplicate key {key!r} "
                                       f"(first at line {seen[key].start_mark.line + 1})")
                continue
            seen[key] = key_node
            yield key, key_node, value_node


class _Builder:
    def __init__(self, source: _Source):
        self.src = source
        self.groups: dict[str, Group] = {}
        self.host_vars: dict[str, dict[str, Any]] = {}
        self.host_nodes: dict[str, yaml.Node] = {}
        self.host_groups: dict[str, list[str]] = {}
        self.group_nodes: dict[str, yaml.Node] = {}
        self.var_lines: dict[tuple[str, str], str] = {}  # (scope, var) -> file:line

    def group(self, name: str, node: yaml.Node, depth: int, parent: Group | None) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name, [], [], {}, depth)
            self.group_nodes[name] = node
        group.depth = max(group.depth, depth)
        for key, key_node, value in self.src.items(node, f"group {name!r}"):
            if key == "vars":
                group.vars.update(self.vars(value, f"group:{name}"))
            elif key == "hosts":
                for host, host_node, host_value in self.src.items(value, f"{name}.hosts"):
                    self.host(host, host_node, host_value, name)
            elif key == "children":
                for child, child_node, child_value in self.src.items(value, f"{name}.children"):
                    if not NAME_RE.fullmatch(child):
                        self.src.problem(child_node, f"group name {child!r} is not valid")
                        continue
                    if child not in group.children:
                        group.children.append(child)
                    self.group(child, child_value, depth + 1, group)
            else:
                hint = suggest(key, list(GROUP_KEYS))
                self.src.problem(key_node, f"group {name!r}: unknown key {key!r}"
                                 + (f" (did you mean {hint!r}?)" if hint else
                                    f"; a group has only {', '.join(GROUP_KEYS)}"))
        return group

    def host(self, name: str, node: yaml.Node, value: yaml.Node, group: str) -> None:
        if not NAME_RE.fullmatch(name):
            self.src.problem(node, f"host name {name!r} is not valid: use letters, digits, "
                                   "'.', '_' and '-'")
            return
        if name not in self.host_vars:
            self.host_vars[name] = {}
            self.host_nodes[name] = node
            self.host_groups[name] = []
        if group not in self.host_groups[name]:
            self.host_groups[name].append(group)
        new_vars = self.vars(value, f"host:{name}")
        for key, item in new_vars.items():
            old = self.host_vars[name].get(key, item)
            if old != item:
                self.src.problems.append(
                    f"{self.var_lines[(f'host:{name}', key)]}: host {name!r} var {key!r} is set "
                    f"twice with different values ({old!r} and {item!r}); set host vars once")
        self.host_vars[name].update(new_vars)

    def vars(self, node: yaml.Node, scope: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, key_node, value_node in self.src.items(node, f"{scope.split(':', 1)[1]} vars"):
            name = ALIASES.get(key, key)
            value = self.src.value(value_node, key)
            if value is INVALID:
                continue
            setting = self.src.known.get(name)
            if setting is not None:
                problem = check_value(setting, value)
                if problem:
                    self.src.problem(key_node, f"{key}: {problem}")
                    continue
            elif not key.startswith("ansible_"):
                hint = suggest(key, list(self.src.known))
                if hint:
                    self.src.problem(key_node, f"unknown setting {key!r} "
                                               f"(did you mean {hint!r}?)")
                    continue
            if name in result:
                self.src.problem(key_node, f"{key} and its alias both set {name!r}")
            result[name] = value
            line = self.src.where(key_node)
            self.var_lines.setdefault((scope, name), line)
        return result

    def members(self, name: str, seen: tuple[str, ...] = ()) -> list[str]:
        if name in seen:
            raise InventoryError([f"{self.src.where(self.group_nodes[seen[-1]])}: group "
                                  f"{name!r} contains itself ({' -> '.join([*seen, name])})"])
        group = self.groups[name]
        found = [h for h, groups in self.host_groups.items() if name in groups]
        for child in group.children:
            found += [h for h in self.members(child, (*seen, name)) if h not in found]
        order = list(self.host_vars)
        return sorted(set(found), key=order.index)


def _check_shape(root: yaml.Node, path: Path) -> list[str]:
    """Problems with what the document asks for: a node that contains itself, nesting past
    MAX_DEPTH, aliases expanding it far past its written size. Iterative and memoised, so it
    costs the document's written size, whatever the aliases would expand to."""
    expanded: dict[int, int] = {}            # id(collection) -> nodes it stands for, expanded
    collections: dict[int, yaml.Node] = {}
    open_nodes: set[int] = set()
    scalars = 0
    stack: list[tuple[yaml.Node, list | None, int]] = [(root, None, 1)]
    while stack:
        node, children, depth = stack.pop()
        key = id(node)
        if children is not None:             # second visit: its children are all sized
            open_nodes.discard(key)
            expanded[key] = 1 + sum(expanded.get(id(c), 1) for c in children)
            continue
        if key in expanded:
            continue
        if key in open_nodes:
            return [f"{path}:{node.start_mark.line + 1}: a YAML alias refers to a node that "
                    "contains it (a recursive alias): an inventory must be a tree"]
        if depth > MAX_DEPTH:
            return [f"{path}:{node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels"]
        children = _children(node)
        collections[key] = node
        open_nodes.add(key)
        stack.append((node, children, depth))
        for child in children:
            if isinstance(child, yaml.ScalarNode):
                scalars += 1
            else:
                stack.append((child, None, depth + 1))
    written = len(expanded) + scalars
    total = expanded.get(id(root), 1)
    limit = MAX_ALIAS_GROWTH * written + MAX_ALIAS_SLACK
    if total > limit:
        # Named: the innermost node past the limit, where the aliases multiply out of bounds.
        node = collections[min((k for k, n in expanded.items() if n > limit), key=expanded.get)]
        return [f"{path}:{node.start_mark.line + 1}: YAML aliases expand {written} written "
                f"nodes to {total}; refused past {limit} (an alias bomb?)"]
    return []


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InventoryError([f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                              f"offset {exc.start}): an inventory is a YAML text file"]) from None


def _ancestry(groups: dict[str, Group], host_groups: list[str]) -> list[Group]:
    """The host's groups and all their ancestors, in Ansible's precedence order (weakest first)."""
    parents: dict[str, set[str]] = {}
    for group in groups.values():
        for child in group.children:
            parents.setdefault(child, set()).add(group.name)
    found: set[str] = set()
    todo = list(host_groups)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(parents.get(name, ()))
    found.discard("all")
    # Ansible: deeper groups win over their parents; siblings at one depth by name.
    return sorted((groups[g] for g in found), key=lambda g: (g.depth, g.name))


def _ssh_config_hostname(name: str) -> str | None:
    path = Path(os.path.expanduser("~/.ssh/config"))
    if not path.is_file():
        return None
    hostname = paramiko.SSHConfig.from_path(str(path)).lookup(name).get("hostname")
    return hostname if hostname and hostname != name else None


def _looks_like_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return "." in name


def parse_extra_vars(assignments: list[str] | tuple[str, ...],
                     known: dict[str, Setting]) -> tuple[dict[str, Any], list[str]]:
    """`-e KEY=VALUE` (VALUE read as YAML, so `gpus=0` is a number): vars and problems."""
    extra: dict[str, Any] = {}
    problems = []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        name = ALIASES.get(key, key)
        if not sep or not key:
            problems.append(f"-e {assignment!r}: expected KEY=VALUE")
            continue
        setting = known.get(name)
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        if setting is not None and setting.type not in TYPED_VALUES and \
                not isinstance(value, str):
            value = text  # a string setting keeps what was typed: mode=0777 is not 511
        problem = check_value(setting, value) if setting else None
        hint = None if setting or key.startswith("ansible_") else suggest(key, list(known))
        if problem:
            problems.append(f"-e {key}: {problem}")
        elif hint:
            problems.append(f"-e {key}: unknown setting (did you mean {hint!r}?)")
        else:
            extra[name] = value
    return extra, problems


def load_inventory(path: str | os.PathLike, known: dict[str, Setting] | None = None,
                   extra_vars: tuple[str, ...] = ()) -> Inventory:
    """Load and validate an inventory; raises InventoryError listing every problem found.

    `known` are the settings to type-check (core settings plus role arguments); other vars
    are kept as they are for templates. `extra_vars` (-e KEY=VALUE) override every host's vars.
    """
    path = Path(path)
    known = dict(CORE_SETTINGS if known is None else known)
    try:
        text = _decode(path.read_bytes(), path)
    except OSError as exc:
        raise InventoryError([f"{path}: cannot read inventory: {exc.strerror or exc}"]) from None
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)   # a ReaderError's: a forbidden character
        line = mark.line + 1 if mark else text.count("\n", 0, position) + 1 \
            if position is not None else None
        where = f"{path}:{line}" if line else str(path)
        reason = getattr(exc, "problem", None) or getattr(exc, "reason", None) or exc
        raise InventoryError([f"{where}: malformed YAML: {reason}"]) from None
    source = _Source(path, known)
    if root is None:
        raise InventoryError([f"{path}: inventory is empty; expected 'all:' with 'hosts:'"])
    shape = _check_shape(root, path)
    if shape:
        raise InventoryError(shape)
    builder = _Builder(source)
    extra, extra_problems = parse_extra_vars(extra_vars, known)
    source.problems += extra_problems
    top = list(source.items(root, "inventory"))
    if source.problems:
        raise InventoryError(source.problems)
    all_group = builder.group("all", yaml.MappingNode("tag:yaml.org,2002:map", []), 0, None)
    for key, key_node, value in top:
        if not NAME_RE.fullmatch(key):
            source.problem(key_node, f"group name {key!r} is not valid")
            continue
        if key != "all" and key not in all_group.children:
            all_group.children.append(key)  # top-level groups are children of all, as in Ansible
        builder.group(key, value, 0 if key == "all" else 1, None if key == "all" else all_group)

    hosts: dict[str, Host] = {}
    for name in builder.host_vars:
        merged: dict[str, Any] = dict(builder.groups["all"].vars)
        for group in _ancestry(builder.groups, builder.host_groups[name]):
            merged.update(group.vars)
        merged.update(builder.host_vars[name])
        merged.update(extra)
        alias = None
        address = merged.get("address")
        if address is None and (address := _ssh_config_hostname(name)) is not None:
            alias = name
        if address is None:
            if not _looks_like_address(name):
                source.problem(builder.host_nodes[name],
                               f"host {name!r} has no address: set ansible_host (or address), "
                               "or give it a HostName in ~/.ssh/config")
                continue
            address = name
        groups = tuple(g.name for g in _ancestry(builder.groups, builder.host_groups[name]))
        hosts[name] = Host(
            name=name, address=address, port=merged.get("port", 22), user=merged.get("user"),
            key_file=merged.get("ssh_key"), become=merged.get("become", False),
            vars=merged, groups=("all", *groups), ssh_alias=alias)
    if not builder.host_vars and not source.problems:
        source.problems.append(f"{path}: no hosts defined; expected 'all:' with 'hosts:'")

    for group in builder.groups.values():
        group.hosts = builder.members(group.name)
    endpoints: dict[tuple[str, int], str] = {}
    for host in hosts.values():
        other = endpoints.setdefault((host.address, host.port), host.name)
        if other != host.name:
            source.problem(builder.host_nodes[host.name],
                           f"hosts {other!r} and {host.name!r} both point at "
                           f"{host.address}:{host.port}")
    if source.problems:
        raise InventoryError(source.problems)
    return Inventory(path=path, hosts=hosts, groups=builder.groups)
