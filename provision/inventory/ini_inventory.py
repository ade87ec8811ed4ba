"""The INI inventory, as Ansible's ini plugin reads it: `[group]` lines of hosts with inline
`key=value` vars, `[group:vars]` lines of `key=value`, `[group:children]` lines of group names;
hosts before the first section are ungrouped.

Values are typed as Ansible types them: a Python literal (`8`, `True`, `[1, 2]`, `'quoted'`) is
that value, anything else the text itself. Nothing is evaluated: literals are parsed, never run.
"""

from __future__ import annotations

import ast
import re
import shlex
import warnings
from typing import Any

from provision.inventory.data import InventoryData
from provision.inventory.yaml_inventory import expand

SECTION_RE = re.compile(r"\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?")
GROUP_LINE_RE = re.compile(r"([^:\]\s]+)\s*(?:#.*)?")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SECTION_KINDS = ("hosts", "children", "vars")
# Values that are text whatever literal_eval would say: the common ones, read without it.
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./@-]*|\d+\.\d+\.\d+\.\d+|/[^'\"\\\s]*")
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
# A host line shlex would split on blanks alone: no quote, backslash or comment.
_SIMPLE_LINE = re.compile(r"[^'\"\\#\s]+(?:[ \t]+[^'\"\\#\s]+)*")


def ini_value(text: str) -> Any:
    """A value as Ansible's INI reader types it: a Python literal, or else the text."""
    if _INT.fullmatch(text):
        return int(text)
    if _PLAIN.fullmatch(text) and text not in ("True", "False", "None"):
        return text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _plain(value)


def _plain(value: Any) -> Any:
    """A literal as inventory data: tuples and sets become lists, bytes text, complex numbers
    and `...` their text."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is Ellipsis:
        return "..."
    if isinstance(value, complex):
        return str(value)
    return value


def read_ini(path: str, text: str, data: InventoryData) -> None:
    problems = data.problems
    control = CONTROL_RE.search(text)
    if control:
        problems.append(f"{path}:{text.count(chr(10), 0, control.start()) + 1}: binary data or a "
                        f"control character ({control.group()!r}); an inventory is text")
        return
    pending: dict[str, dict[str, Any]] = {}   # groups named before they are declared
    group, kind = "ungrouped", "hosts"
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{path}:{number}"
        section = SECTION_RE.fullmatch(line)
        if section:
            group, kind = section.group(1), section.group(2) or "hosts"
            if kind not in SECTION_KINDS:
                problems.append(f"{where}: section [{group}:{kind}] has an unknown kind "
                                f"{kind!r}: use [{group}], [{group}:vars] or [{group}:children]")
                kind = "skip"
                continue
            if group not in data.groups:
                if data.add_group(group, where) is None:
                    kind = "skip"
                    continue
                if kind == "vars" and group not in pending:
                    pending[group] = {"where": where, "kind": "vars", "parents": []}
            if group in pending and kind != "vars":
                if pending[group]["kind"] == "children":
                    _adopt(group, pending, data)
                else:
                    del pending[group]
            continue
        if line.startswith("[") and line.endswith("]"):
            problems.append(f"{where}: {line!r} is not a section: write [group], [group:vars] or "
                            "[group:children], without spaces")
            kind = "skip"
            continue
        if kind == "hosts":
            _host_line(line, group, where, data)
        elif kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                problems.append(f"{where}: expected key=value in [{group}:vars], got {line!r}")
                continue
            data.put_group_var(data.groups[group], key.strip(), ini_value(value.strip()), where)
        elif kind == "children":
            match = GROUP_LINE_RE.fullmatch(line)
            if not match:
                problems.append(f"{where}: expected a group name in [{group}:children], "
                                f"got {line!r}")
                continue
            child = match.group(1)
            if child in data.groups:
                data.add_child(group, child, where)
            elif child in pending:
                pending[child]["parents"].append((group, where))
            else:
                pending[child] = {"where": where, "kind": "children", "parents": [(group, where)]}
    for name, declaration in pending.items():
        if declaration["kind"] == "vars":
            problems.append(f"{declaration['where']}: [{name}:vars] is for a group that is not "
                            f"defined: add a [{name}] or [{name}:children] section")
        else:
            parent = declaration["parents"][-1][0]
            problems.append(f"{declaration['where']}: [{parent}:children] names {name!r}, which "
                            f"is not defined: add a [{name}] section")


def _adopt(group: str, pending: dict[str, dict[str, Any]], data: InventoryData) -> None:
    """A group named in a [parent:children] section before its own section: attach it now."""
    for parent, where in pending[group]["parents"]:
        data.add_child(parent, group, where)
        if parent in pending and pending[parent]["kind"] == "children":
            _adopt(parent, pending, data)
    del pending[group]


def _host_line(line: str, group: str, where: str, data: InventoryData) -> None:
    """`name[:port] [key=value ...] [# comment]`, the values shell-quoted as needed."""
    if _SIMPLE_LINE.fullmatch(line):
        tokens = line.split()
    else:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            data.problems.append(f"{where}: cannot read this host line: {exc}")
            return
    if not tokens:
        return
    pattern = tokens[0]
    if pattern == "---":
        data.problems.append(f"{where}: '---' starts a YAML document, not an INI host line")
        return
    if pattern.endswith(":"):
        data.problems.append(f"{where}: host {pattern!r} ends in ':' (a port goes after it)")
        return
    variables = []
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if not sep or not key:
            data.problems.append(f"{where}: expected key=value after the host, got {token!r}")
            return
        variables.append((key, ini_value(value)))
    names, port = expand(pattern, where, data)
    for name in names:
        host = data.add_host(name, group, where, port)
        if host is None:
            return
        for key, value in variables:
            data.put(host.vars, key, value, where)


def read_host_list(source: str, data: InventoryData) -> None:
    """`-i gpu01,gpu02,`: hosts by name, comma-separated (Ansible's host_list)."""
    for item in source.split(","):
        item = item.strip()
        if item:
            names, port = expand(item, f"-i {source!r}", data)
            for name in names:
                data.add_host(name, "ungrouped", f"-i {source!r}", port)
