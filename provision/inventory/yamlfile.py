"""Reading an inventory's YAML safely: UTF-8 text only, a tree of bounded size (no recursive
alias, no alias bomb, no nesting past MAX_DEPTH), safe tags only, every node keeping its line.

Nodes are walked, not loaded, so that every value and every problem keeps its file:line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import yaml
import yaml.constructor

from provision.errors import InventoryError

# What an inventory's YAML may ask of the loader. Aliases are references, cheap to compose but
# expanded by every walk over the document: a few lines can name 10^8 nodes (an alias bomb), or
# a node can contain itself. Real inventories reuse blocks a few times per host at most.
MAX_ALIAS_GROWTH = 50          # expanded nodes per node written...
MAX_ALIAS_SLACK = 100_000      # ...beyond this many
MAX_DEPTH = 100                # nesting levels (groups within groups, vars within vars)

INVALID = object()   # a value that could not be read (its problem is already reported)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
VAULT_TAGS = ("!vault", "!vault-encrypted")


class Vaulted:
    """A value encrypted with ansible-vault (`!vault`): provision reads no secrets, so it is
    never decrypted; the var holding it is left out, with a warning."""

    def __repr__(self) -> str:
        return "<encrypted with ansible-vault>"


VAULTED = Vaulted()


class _Constructor(yaml.constructor.SafeConstructor):
    """The safe constructor plus Ansible's own tags: `!unsafe` (a value Ansible must not
    template; provision templates no inventory value, so it is the plain value) and `!vault`."""


def _unsafe(constructor: _Constructor, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return constructor.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return constructor.construct_mapping(node, deep=True)
    return constructor.construct_scalar(node)


_Constructor.add_constructor("!unsafe", _unsafe)
for _tag in VAULT_TAGS:
    _Constructor.add_constructor(_tag, lambda constructor, node: VAULTED)


class YamlSyntaxError(InventoryError):
    """The text is not well-formed YAML (it may be an INI inventory)."""


def line_of(text: str | bytes, offset: int) -> int:
    return text.count("\n" if isinstance(text, str) else b"\n", 0, offset) + 1


def decode(data: bytes, path: Path | str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError([
            f"{path}:{line_of(data, exc.start)}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start}): an inventory is a YAML or INI text file"]) from None


def compose(text: str, path: Path | str) -> yaml.Node | None:
    """The document's node tree, checked by check_shape; InventoryError with the line if the
    YAML is malformed."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)   # a ReaderError's: a forbidden character
        line = mark.line + 1 if mark else line_of(text, position) \
            if position is not None else None
        where = f"{path}:{line}" if line else str(path)
        reason = getattr(exc, "problem", None) or getattr(exc, "reason", None) or exc
        raise YamlSyntaxError([f"{where}: malformed YAML: {reason}"]) from None
    except RecursionError:
        raise YamlSyntaxError([f"{path}: malformed YAML: nested too deeply"]) from None
    if root is not None:
        problems = check_shape(root, path)
        if problems:
            raise InventoryError(problems)
    return root


def check_shape(root: yaml.Node, path: Path | str) -> list[str]:
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


class Document:
    """One composed file: values constructed on demand, problems collected with their lines."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = path
        self.problems = problems
        self.constructor = _Constructor()

    def where(self, node: yaml.Node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}"

    def problem(self, node: yaml.Node, message: str) -> None:
        self.problems.append(f"{self.where(node)}: {message}")

    def value(self, node: yaml.Node, what: str = "value") -> Any:
        """The node's Python value, or INVALID (a problem reported at its line) for a tag the
        safe loader refuses (`!!python/object`, unknown tags) or a scalar its tag cannot read
        (`!!int abc`, `!!timestamp zz`)."""
        if node.tag == _STR and isinstance(node, yaml.ScalarNode):
            return node.value
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

    def pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        """A mapping's (key, value) nodes with YAML merge keys (`<<: *base`) applied: the
        merged-in pairs first, the mapping's own keys overriding them."""
        if not any(k.tag == _MERGE for k, _ in node.value):
            return node.value
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        own: list[tuple[yaml.Node, yaml.Node]] = []
        for key, value in node.value:
            if key.tag != _MERGE:
                own.append((key, value))
                continue
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in sources:
                if isinstance(source, yaml.MappingNode):
                    merged.extend(self.pairs(source))
                else:
                    self.problem(source, "a merge key (<<) takes a mapping or a list of mappings")
        keys = {self.scalar(k) for k, _ in own}
        seen: set[Any] = set()
        result = []
        for key, value in merged:
            name = self.scalar(key)
            if name not in keys and name not in seen:
                seen.add(name)
                result.append((key, value))
        return result + own

    def scalar(self, node: yaml.Node) -> Any:
        return node.value if isinstance(node, yaml.ScalarNode) else id(node)

    def items(self, node: yaml.Node, what: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) of a mapping; reports non-mappings and duplicate keys."""
        if is_null(node):
            return
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping")
            return
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in self.pairs(node):
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


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL
