"""Role templates render in jinja2's sandbox, and inventory values are never compiled."""

from __future__ import annotations

import pytest
import yaml
from jinja2.exceptions import SecurityError

from provision.operations.nfs import _clients_by_share
from provision.inventory import load_inventory
from provision.roles import check_context, load_role, render
from provision.setup import known_settings

PAYLOAD = "/mnt/s{{ lipsum.__globals__.os.popen('id').read() }}"


@pytest.mark.parametrize("expression", [
    "{{ lipsum.__globals__.os.popen('id').read() }}",
    "{{ host.__class__.__mro__ }}",
    "x{{ ''.__class__.__subclasses__() }}",
])
def test_a_role_expression_cannot_reach_python_internals(expression):
    with pytest.raises(SecurityError):
        render(expression, {"host": object()})


def test_a_variable_holding_template_syntax_is_rendered_as_its_text():
    assert render("{{ nfs_mount_point }}", {"nfs_mount_point": PAYLOAD}) == PAYLOAD
    assert render("{{ p }}/.condarc", {"p": PAYLOAD}) == PAYLOAD + "/.condarc"


def test_the_nfs_cluster_check_uses_the_inventory_values_as_they_are(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"n1": {
        "address": "10.0.0.1", "nfs_server": "10.0.0.9", "nfs_export": "/srv/{{ 6 * 7 }}",
        "nfs_mount_point": PAYLOAD}}}}))
    inventory = load_inventory(str(path), known_settings())
    shares = _clients_by_share(check_context({"n1": None}, inventory, load_role("nfs"), False))
    assert shares == {"10.0.0.9:/srv/{{ 6 * 7 }}": [("n1", PAYLOAD)]}
