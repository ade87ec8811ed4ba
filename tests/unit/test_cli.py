"""The `provision` command line: --help, --version and the `inventory` command."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from provision import __version__
from provision.cli import main
from provision.plan import EXIT_USAGE

INVENTORY = """
all:
  vars:
    user: deploy
    cluster_cidr: 10.0.0.0/24
  children:
    gpu:
      vars: {gpus: 8}
      hosts:
        g1: {ansible_host: 10.0.0.11}
        g2: {ansible_host: 10.0.0.12, ansible_port: 2222, note: "$(id)"}
    cpu:
      hosts:
        c1: {address: 10.0.0.21}
    empty:
"""


pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(textwrap.dedent(INVENTORY).lstrip())
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"provision, version {__version__}"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_commands(flag):
    result = invoke(flag)
    assert result.exit_code == 0
    assert result.output.startswith("Usage: ")
    for command in ("inventory", "exec", "setup"):
        assert f"\n  {command} " in result.output


def test_inventory_help():
    result = invoke("inventory", "--help")
    assert result.exit_code == 0
    assert "--json" in result.output and "--limit" in result.output


def test_inventory_text(inventory):
    result = invoke("inventory", inventory)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:5] == ["@all: g1, g2, c1", "@ungrouped: (no hosts)", "@gpu: g1, g2",
                         "@cpu: c1", "@empty: (no hosts)"]
    assert "g1 (deploy@10.0.0.11:22)" in lines
    assert "g2 (deploy@10.0.0.12:2222)" in lines
    assert "c1 (deploy@10.0.0.21:22)" in lines
    g2 = lines.index("g2 (deploy@10.0.0.12:2222)")
    assert "    gpus = 8" in lines[g2:g2 + 8]
    assert "    note = '$(id)'" in lines[g2:g2 + 8]


def test_inventory_json_is_ansible_inventory_lists_shape(inventory):
    result = invoke("inventory", inventory, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert sorted(data) == ["_meta", "all", "cpu", "gpu"]      # empty groups left out
    assert data["all"] == {"children": ["ungrouped", "gpu", "cpu", "empty"]}
    assert data["gpu"] == {"hosts": ["g1", "g2"]}
    # Each host's merged vars under the names the inventory wrote.
    assert data["_meta"]["hostvars"]["g2"] == {
        "user": "deploy", "cluster_cidr": "10.0.0.0/24", "gpus": 8,
        "ansible_host": "10.0.0.12", "ansible_port": 2222, "note": "$(id)"}


def test_inventory_of_several_sources(inventory, tmp_path):
    more = tmp_path / "more.ini"
    more.write_text("[gpu]\ng3 ansible_host=10.0.0.13\n[gpu:vars]\ngpus=4\n")
    result = invoke("inventory", inventory, more, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["gpu"] == {"hosts": ["g1", "g2", "g3"]}
    assert data["_meta"]["hostvars"]["g1"]["gpus"] == 4


def test_inventory_warnings_go_to_stderr(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("h1 ssh_kye=/k\n")
    result = CliRunner(mix_stderr=False).invoke(main, ["inventory", str(path)]) \
        if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else \
        CliRunner().invoke(main, ["inventory", str(path)])
    assert result.exit_code == 0
    assert "warning: " in result.stderr and "did you mean 'ssh_key'?" in result.stderr
    assert "warning" not in result.stdout


def test_inventory_limit(inventory):
    result = invoke("inventory", inventory, "--json", "--limit", "c1,g2")
    assert result.exit_code == 0
    assert sorted(json.loads(result.output)["_meta"]["hostvars"]) == ["c1", "g2"]


def test_inventory_limit_from_retry_file(inventory, tmp_path):
    retry = tmp_path / "hosts.yml.retry"
    retry.write_text("g1\nc1\n")
    result = invoke("inventory", inventory, "--json", "--limit", f"@{retry}")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert sorted(data["_meta"]["hostvars"]) == ["c1", "g1"] and data["gpu"] == {"hosts": ["g1"]}


def test_inventory_missing_retry_file(inventory, tmp_path):
    result = invoke("inventory", inventory, "--limit", f"@{tmp_path}/none.retry")
    assert result.exit_code == EXIT_USAGE
    assert "cannot read retry file" in result.output


def test_inventory_unknown_limit(inventory):
    result = invoke("inventory", inventory, "--limit", "gpus,empty")
    assert result.exit_code == EXIT_USAGE
    assert "2 problem(s) in the inventory" in result.output
    assert "no host or group named 'gpus' (did you mean 'gpu'?)" in result.output
    assert "group 'empty' has no hosts" in result.output


def test_inventory_errors_are_all_listed_with_exit_code_2(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("all:\n  hosts:\n    n1: {address: 10.0.0.1, port: 0}\n"
                    "    n2: {address: 10.0.0.2, gpus: -1}\n")
    result = invoke("inventory", path)
    assert result.exit_code == EXIT_USAGE
    assert "error: 2 problem(s) in the inventory:" in result.output
    assert f"{path}:3: port: must be a port number 1-65535, got 0" in result.output
    assert f"{path}:4: gpus: must be at least 0, got -1" in result.output
    assert "Traceback" not in result.output


def test_inventory_missing_file(tmp_path):
    result = invoke("inventory", tmp_path / "nope.yml")
    assert result.exit_code == EXIT_USAGE
    assert f"{tmp_path / 'nope.yml'}: cannot read inventory" in result.output


def test_inventory_role_arguments_are_type_checked(tmp_path):
    # The inventory command knows the shipped roles' arguments, so their types are checked too.
    from provision.setup import known_settings
    known = known_settings()
    name, setting = next((n, s) for n, s in known.items() if s.type == "str"
                         and s.choices is None and n not in ("master",))
    path = tmp_path / "roles.yml"
    path.write_text(f"all:\n  vars:\n    {name}: 5\n  hosts:\n    n1: {{address: 10.0.0.1}}\n")
    result = invoke("inventory", path)
    assert result.exit_code == EXIT_USAGE
    assert f"{path}:3: {name}: must be a string, got int 5" in result.output


def test_unknown_command():
    result = invoke("inventroy")
    assert result.exit_code == 2
    assert "No such command 'inventroy'" in result.output


def test_train_refuses_forks_instead_of_ignoring_it(inventory, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    result = invoke("train", "-i", str(inventory), "--forks", "2", str(script))
    assert result.exit_code == 2
    assert "--forks: train reaches every node at once" in result.output
