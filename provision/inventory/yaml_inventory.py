"""The YAML (and JSON) inventory: top-level keys are groups, each with `hosts`, `vars` and
`children`, as Ansible's yaml inventory plugin reads it."""

from __future__ import annotations

import yaml

from provision.inventory import patterns
from provision.inventory.data import MAX_HOSTS, GroupRecord, InventoryData
from provision.inventory.yamlfile import INVALID, Document, is_null
from provision.settings import suggest

GROUP_KEYS = ("hosts", "vars", "children")


class YamlInventory:
    def __init__(self, doc: Document, data: InventoryData):
        self.doc = doc
        self.data = data

    def read(self, root: yaml.Node) -> None:
        doc = self.doc
        if not isinstance(root, yaml.MappingNode):
            doc.problem(root, "inventory must be a mapping")
            return
        top = list(doc.items(root, "inventory"))
        for key, key_node, value in top:
            if key == "plugin" and not is_null(value):
                doc.problem(key_node, "this is an inventory plugin's configuration (a dynamic "
                                      "inventory), which provision does not run: give it an "
                                      "inventory file (`ansible-inventory -i X --list --yaml` "
                                      "writes one)")
                return
        for key, key_node, value in top:
            if not isinstance(value, yaml.MappingNode) and not is_null(value):
                self.data.warnings.append(f"{doc.where(key_node)}: {key!r} is not a group (its "
                                          "value is not a mapping); skipped, as Ansible does")
                continue
            self.group(key, key_node, value)

    def group(self, name: str, key_node: yaml.Node, node: yaml.Node) -> GroupRecord | None:
        doc, data = self.doc, self.data
        group = data.add_group(name, doc.where(key_node))
        if group is None or is_null(node):
            return group
        if not isinstance(node, yaml.MappingNode):
            doc.problem(node, f"group {name!r} must be a mapping with {', '.join(GROUP_KEYS)}")
            return group
        for key, section_node, value in doc.items(node, f"group {name!r}"):
            if key not in GROUP_KEYS:
                hint = suggest(key, list(GROUP_KEYS))
                if hint:
                    doc.problem(section_node, f"group {name!r}: unknown key {key!r} (did you mean "
                                              f"{hint!r}?)")
                else:
                    data.warnings.append(f"{doc.where(section_node)}: group {name!r}: unknown key "
                                         f"{key!r} skipped (a group has {', '.join(GROUP_KEYS)})")
                continue
            if is_null(value):
                continue
            entries = self.section(name, key, value)
            if key == "vars":
                for var, var_node, value_node in entries:
                    item = doc.value(value_node, var)
                    if item is not INVALID:
                        data.put_group_var(group, var, item, doc.where(var_node))
            elif key == "children":
                for child, child_node, child_value in entries:
                    if not isinstance(child_value, yaml.MappingNode) and not is_null(child_value):
                        doc.problem(child_value, f"group {child!r} (a child of {name!r}) must be "
                                                 f"a mapping with {', '.join(GROUP_KEYS)}")
                        continue
                    sub = data.add_group(child, doc.where(child_node))
                    if sub is None:
                        continue
                    data.add_child(name, child, doc.where(child_node))
                    if child in data.groups[name].children:
                        self.group(child, child_node, child_value)
            else:
                for pattern, host_node, host_value in entries:
                    self.hosts(name, pattern, host_node, host_value)
        return group

    def section(self, group: str, key: str, node: yaml.Node) -> list:
        """A section's (name, name node, value node) entries: a mapping, or one bare name."""
        doc = self.doc
        if isinstance(node, yaml.ScalarNode):       # `hosts: gpu01`: one name, no vars
            name = doc.value(node, key)
            if isinstance(name, str):
                return [(name, node, yaml.ScalarNode("tag:yaml.org,2002:null", "",
                                                     node.start_mark, node.end_mark))]
        if not isinstance(node, yaml.MappingNode):
            doc.problem(node, f"group {group!r}: {key} must be a mapping (or one name)")
            return []
        return list(doc.items(node, f"{group}.{key}"))

    def hosts(self, group: str, pattern: str, key_node: yaml.Node, node: yaml.Node) -> None:
        doc, data = self.doc, self.data
        where = doc.where(key_node)
        if not is_null(node) and not isinstance(node, yaml.MappingNode):
            doc.problem(node, f"host {pattern!r}: its vars must be a mapping")
            return
        names, port = expand(pattern, where, data)
        hosts = []
        for name in names:
            host = data.add_host(name, group, where, port)
            if host is None:
                return
            hosts.append(host)
        if not hosts:
            return
        for var, var_node, value_node in doc.items(node, f"{pattern} vars"):
            value = doc.value(value_node, var)
            if value is not INVALID:
                var_where = doc.where(var_node)
                for host in hosts:
                    data.put(host.vars, var, value, var_where)


def expand(pattern: str, where: str, data: InventoryData) -> tuple[list[str], int | None]:
    """A host pattern's names and port; a bad pattern is a problem at `where`, a range naming no
    host a warning (Ansible loads it as no host)."""
    host, port = patterns.split_port(pattern)
    if port is not None and not 1 <= port <= 65535:
        data.problems.append(f"{where}: host {pattern!r}: port must be 1-65535, got {port}")
        return [], None
    try:
        size = patterns.count(host)
        if len(data.hosts) + size > MAX_HOSTS:
            data.problems.append(f"{where}: host pattern {pattern!r} names {size:,} hosts; an "
                                 f"inventory may name at most {MAX_HOSTS:,}")
            return [], None
        names = patterns.expand(host)
    except patterns.PatternError as exc:
        data.problems.append(f"{where}: host pattern {pattern!r}: {exc}")
        return [], None
    if not names:
        data.warnings.append(f"{where}: host pattern {pattern!r} names no host")
    return names, port
