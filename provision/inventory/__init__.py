"""Host, Group, Inventory and load_inventory(sources): any Ansible inventory, validated.

A source is a YAML (or JSON) inventory file, an INI one (told apart by content, not by name), a
directory of them (merged in name order), or a `host1,host2,` list; several sources merge in
order, each with the group_vars/ and host_vars/ beside it. Hosts, groups, vars, precedence and
host order are Ansible's (checked against ansible-inventory itself by the tests); provision's
own settings are type-checked where they are written.

Every problem is collected with its file:line and reported at once (InventoryError), so a user
fixes an inventory in one pass instead of one error per run. Inventory values are data: nothing
in an inventory is ever evaluated, rendered or run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from provision.errors import InventoryError
from provision.inventory.data import ANSIBLE_NAMES, InventoryData
from provision.inventory.ini_inventory import SECTION_RE, read_host_list, read_ini
from provision.inventory.model import Group, Host, Inventory
from provision.inventory.varsfiles import VarsFiles
from provision.inventory.yaml_inventory import GROUP_KEYS, YamlInventory
from provision.inventory.yamlfile import (MAX_ALIAS_GROWTH, MAX_ALIAS_SLACK, MAX_DEPTH, Document,
                                          YamlSyntaxError, check_shape, decode)
from provision.settings import CORE_SETTINGS, Setting, check_value, suggest

__all__ = ["Group", "Host", "Inventory", "InventoryError", "load_inventory", "parse_extra_vars",
           "GROUP_KEYS", "MAX_ALIAS_GROWTH", "MAX_ALIAS_SLACK", "MAX_DEPTH", "TYPED_VALUES"]

# Setting types whose -e value is read as YAML (numbers, booleans, lists, mappings).
TYPED_VALUES = ("int", "float", "bool", "port", "list", "dict")
# What Ansible leaves out of a directory of inventories.
IGNORED_NAMES = ("host_vars", "group_vars", "vars_plugins")
IGNORED_EXTENSIONS = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst",
                      ".orig", ".cfg", ".retry")
# A line only YAML writes: `key:` (no '=' before the colon), a `- item`, a document start.
_YAML_LINE = re.compile(r"\s*(?:-\s|---|[^\s#;=\[][^=]*:(?:\s|$))")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _extra_vars(assignments: Sequence[str], known: dict[str, Setting]) \
        -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    raw: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    problems = []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        name = ANSIBLE_NAMES.get(key, key)
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
            raw[key] = value
    return raw, extra, problems


def parse_extra_vars(assignments: list[str] | tuple[str, ...],
                     known: dict[str, Setting]) -> tuple[dict[str, Any], list[str]]:
    """`-e KEY=VALUE` (VALUE read as YAML, so `gpus=0` is a number): vars and problems."""
    _, extra, problems = _extra_vars(assignments, known)
    return extra, problems


def _ssh_config_lookup() -> Callable[[str], str | None]:
    """HostName for an inventory name from ~/.ssh/config (read once per load), or None."""
    path = Path(os.path.expanduser("~/.ssh/config"))
    if not path.is_file():
        return lambda name: None
    import paramiko
    try:
        config = paramiko.SSHConfig.from_path(str(path))
    except Exception:       # an SSH config paramiko cannot read: ssh itself will say why
        return lambda name: None

    def lookup(name: str) -> str | None:
        hostname = config.lookup(name).get("hostname")
        return hostname if hostname and hostname != name else None
    return lookup


class _Loader:
    def __init__(self, known: dict[str, Setting]):
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.data = InventoryData(known, self.problems, self.warnings)
        self.files: list[Path] = []
        self.empty: list[Path] = []

    def source(self, source: str) -> Path | None:
        """Read one -i source; its group_vars/host_vars directory (None for a host list)."""
        path = Path(source)
        if "," in source and not path.exists():
            read_host_list(source, self.data)
            return None
        if path.is_dir():
            self.directory(path)
            return path
        self.file(path)
        return path.parent

    def directory(self, directory: Path) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            self.problems.append(f"{directory}: cannot read inventory: {exc.strerror or exc}")
            return
        for name in names:
            if name.startswith(".") or name in IGNORED_NAMES or name.endswith(IGNORED_EXTENSIONS):
                continue
            path = directory / name
            if path.is_dir():
                self.directory(path)
            else:
                self.file(path)

    def file(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            self.problems.append(f"{path}: cannot read inventory: {exc.strerror or exc}")
            return
        self.files.append(path)
        if path.suffix == ".toml":
            self.problems.append(f"{path}: a TOML inventory; provision reads YAML and INI ones")
            return
        if raw.startswith(b"#!") and os.access(path, os.X_OK):
            self.problems.append(
                f"{path}:1: an executable script (a dynamic inventory); provision never runs code "
                "from an inventory: give it the inventory as a file (`ansible-inventory -i "
                "SCRIPT --list --yaml` writes one)")
            return
        try:
            text = decode(raw, path)
            kind, root = self.detect(path, text)
        except InventoryError as exc:
            self.problems.extend(exc.problems)
            return
        if kind == "empty":
            self.empty.append(path)
        elif kind == "ini":
            read_ini(str(path), text, self.data)
        else:
            YamlInventory(Document(path, self.problems), self.data).read(root)

    def detect(self, path: Path, text: str) -> tuple[str, yaml.Node | None]:
        """YAML or INI, by content: an INI section header first, or text that is not a YAML
        mapping (host lines), is INI; malformed YAML that has YAML's `key:` lines is YAML."""
        first = next((s for s in (line.strip() for line in text.splitlines())
                      if s and s[0] not in "#;"), None)
        if first is None:
            return "empty", None
        if SECTION_RE.fullmatch(first):
            return "ini", None
        try:
            root = yaml.compose(text, Loader=_LOADER)
        except (yaml.YAMLError, RecursionError):
            if any(_YAML_LINE.match(line) for line in text.splitlines()):
                from provision.inventory.yamlfile import compose
                compose(text, path)             # raises the YAML error, with its line
            return "ini", None
        if root is None:
            return "empty", None
        if isinstance(root, yaml.ScalarNode):
            return "ini", None
        problems = check_shape(root, path)
        if problems:
            raise InventoryError(problems)
        return "yaml", root


def load_inventory(path: str | os.PathLike | Sequence[str | os.PathLike],
                   known: dict[str, Setting] | None = None,
                   extra_vars: Sequence[str] = ()) -> Inventory:
    """Load and validate an inventory from one source or several (merged in order); raises
    InventoryError listing every problem found.

    `known` are the settings to type-check (core settings plus role arguments); other vars
    are kept as they are for templates. `extra_vars` (-e KEY=VALUE) override every host's vars.
    """
    sources = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else \
        [os.fspath(p) for p in path]
    if not sources:
        raise InventoryError(["no inventory given"])
    known = dict(CORE_SETTINGS if known is None else known)
    loader = _Loader(known)
    basedirs = [loader.source(source) for source in sources]
    data = loader.data
    data.reconcile()
    vars_files = VarsFiles(data)
    layers = [vars_files.layers(b) for b in basedirs if b is not None]
    raw_extra, extra, extra_problems = _extra_vars(extra_vars, known)
    problems = loader.problems
    problems += extra_problems
    first = Path(sources[0])
    if not data.hosts and not problems:
        if loader.empty and len(loader.files) == 1:
            problems.append(f"{first}: inventory is empty; expected 'all:' with 'hosts:'")
        else:
            problems.append(f"{first}: no hosts defined; expected 'all:' with 'hosts:'")
    if problems:
        raise InventoryError(list(dict.fromkeys(problems)))
    inventory = data.build(first, tuple(sources), (*loader.files, *vars_files.files),
                           [g for g, _ in layers], [h for _, h in layers], (raw_extra, extra),
                           _ssh_config_lookup())
    inventory.warnings[:] = list(dict.fromkeys(inventory.warnings))
    return inventory
