"""Inventory files that are not what they should be: each is one clear problem naming the file
and line, never a traceback, and never more work than the file's own size (an alias bomb)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from provision.errors import InventoryError
from provision.inventory import MAX_DEPTH, load_inventory

LEVELS = "abcdefgh"
BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{LEVELS[i - 1]}' if i else '0'] * 10)}]\n"
    for i, name in enumerate(LEVELS)) + \
    "all:\n  vars: {big: [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]}\n  hosts: {n1: {address: 10.0.0.1}}\n"

CASES = {
    "not_utf8": (b"all:\n  hosts:\n    n1: {address: 10.0.0.1, note: \"\xff\"}\n",
                 ":3: not UTF-8 text (byte 0xff"),
    "binary": (bytes(range(256)) * 4, ":2: not UTF-8 text"),
    "control_character": (b"all:\n  hosts:\n    n1\x00: {}\n",
                          ":3: malformed YAML: control characters are not allowed"),
    "recursive_alias": (b"g: &g {children: {h: *g}}\n", ":1: a YAML alias refers to a node"),
    "recursive_var": (b"all:\n  vars: {x: &x [*x]}\n  hosts: {n1: {address: 10.0.0.1}}\n",
                      ":2: a YAML alias refers to a node"),
    "alias_bomb": (BOMB.encode(), "(an alias bomb?)"),
    "group_cycle": (b"all:\n  hosts: {n1: {address: 10.0.0.1}}\n  children:\n    a:\n"
                    b"      children:\n        b:\n          children:\n            a: {}\n",
                    ":8: group 'a' contains itself (all -> a -> b -> a)"),
    "too_deep": (("all:\n  children:\n" + "".join(
        "  " * (i + 2) + f"g{i}:\n" + "  " * (i + 3) + "children:\n"
        for i in range(MAX_DEPTH + 5))).encode(), f"nested more than {MAX_DEPTH} levels"),
}


@pytest.mark.timeout(10)   # the alias bomb took 76 s and ended in MemoryError
@pytest.mark.parametrize("name", CASES)
def test_a_malformed_inventory_is_one_clear_problem(tmp_path, name):
    data, expected = CASES[name]
    path = tmp_path / "inventory.yml"
    path.write_bytes(data)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(str(path)) and expected in problem, problem


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["not_utf8", "recursive_alias", "alias_bomb", "group_cycle"])
def test_the_cli_exits_2_without_a_traceback(tmp_path, name):
    path = tmp_path / "inventory.yml"
    path.write_bytes(CASES[name][0])
    done = subprocess.run([sys.executable, "-m", "provision", "inventory", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and CASES[name][1] in done.stderr


def test_reusing_blocks_through_aliases_is_still_fine(tmp_path):
    hosts = "".join(f"    n{i}: {{address: 10.0.0.{i}, tags: *v}}\n" for i in range(1, 200))
    path = tmp_path / "inventory.yml"
    path.write_text("all:\n  vars: {shared: &v [a, b, c]}\n  hosts:\n" + hosts)
    inventory = load_inventory(path)
    assert len(inventory.hosts) == 199 and inventory.hosts["n7"].vars["tags"] == ["a", "b", "c"]
