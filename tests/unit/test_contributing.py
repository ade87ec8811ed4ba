"""The README's contributing section stays true (issue 12): its walkthrough's blocks are the
repository's files byte for byte, and it documents every key a role.yml may hold and every
operation a task may name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provision.operations import REGISTRY
from provision.roles import ARG_KEYS, ROLE_KEYS, TASK_KEYS
from provision.setup import load_roles

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SECTION = README[README.index("## Contributing"):README.index("## Tests")]
# A fenced block whose first line names the file it shows: ```yaml\n# path\n...```
BLOCKS = dict(re.findall(r"```\w*\n# (\S+)\n(.*?)```", SECTION, re.S))


def test_the_walkthrough_shows_a_role_its_template_and_its_case():
    assert set(BLOCKS) == {"examples/roles/memlock/role.yml",
                           "examples/roles/memlock/templates/memlock.conf.j2",
                           "tests/unit/cases/operations/example_memlock.yaml"}


@pytest.mark.parametrize("path", sorted(BLOCKS))
def test_each_block_is_the_file_it_names(path):
    assert BLOCKS[path] == (REPO / path).read_text()


def test_the_example_role_loads_where_its_order_puts_it():
    (role,) = load_roles(REPO / "examples" / "roles")
    assert role.name == "memlock" and role.order == 45
    shipped = [r.order for r in load_roles()]
    assert shipped == sorted(shipped) and 45 not in shipped


def test_every_role_key_and_operation_is_documented():
    for key in (*ROLE_KEYS, *TASK_KEYS, *ARG_KEYS):
        assert f"`{key}`" in SECTION, key
    for name in REGISTRY:
        assert f"| `{name}` |" in SECTION, name
