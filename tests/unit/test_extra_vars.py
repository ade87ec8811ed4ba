"""-e KEY=VALUE: parse_extra_vars, load_inventory(extra_vars=...) and the CLI's -e."""

from __future__ import annotations

import json
import shutil
import socket
import textwrap

import pytest
from click.testing import CliRunner

from provision.cli import main
from provision.errors import InventoryError
from provision.inventory import load_inventory, parse_extra_vars
from provision.plan import EXIT_USAGE
from provision.roles import ROLES_DIR
from provision.settings import CORE_SETTINGS, Setting

INVENTORY = """
all:
  vars:
    gpus: 8
    user: deploy
  children:
    gpu:
      vars: {gpus: 4, rendezvous_port: 29400}
      hosts:
        g1: {ansible_host: 10.0.0.11, gpus: 2, ansible_port: 2200}
        g2: {ansible_host: 10.0.0.12}
    cpu:
      hosts:
        c1: {address: 10.0.0.21, gpus: 0}
"""


pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(textwrap.dedent(INVENTORY).lstrip())
    return path


def parse(*assignments):
    return parse_extra_vars(list(assignments), CORE_SETTINGS)


@pytest.mark.parametrize("assignment, name, value", [
    ("gpus=0", "gpus", 0),
    ("gpus=8", "gpus", 8),
    ("become=true", "become", True),
    ("command_timeout=2.5", "command_timeout", 2.5),
    ("train_env={NCCL_DEBUG: INFO, OMP_NUM_THREADS: 4}", "train_env",
     {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": 4}),
    ("master=g2", "master", "g2"),
    ("address=10.0.0.99", "address", "10.0.0.99"),
    ("ansible_port=2222", "port", 2222),                 # Ansible's alias, renamed
    ("ansible_host=10.1.1.1", "address", "10.1.1.1"),
    ("ansible_user=ops", "user", "ops"),
    ("note=a=b=c", "note", "a=b=c"),                      # the value may hold "="
    ("note=", "note", ""),
    ("note=[unclosed", "note", "[unclosed"),              # not YAML: kept as text
    ("my_template_var=yes please", "my_template_var", "yes please"),
])
def test_values_are_read_as_yaml(assignment, name, value):
    extra, problems = parse(assignment)
    assert problems == []
    assert extra == {name: value}
    assert type(extra[name]) is type(value)


def test_later_assignments_win():
    assert parse("gpus=1", "gpus=2") == ({"gpus": 2}, [])


@pytest.mark.parametrize("assignment, problem", [
    ("gpus=many", "-e gpus: "),
    ("gpus=-1", "-e gpus: must be at least 0, got -1"),
    ("ansible_port=99999", "-e ansible_port: "),
    ("become=maybe", "-e become: "),
    ("train_env=[A, B]", "-e train_env: "),
])
def test_type_errors(assignment, problem):
    extra, problems = parse(assignment)
    assert extra == {}
    assert len(problems) == 1 and problems[0].startswith(problem)


@pytest.mark.parametrize("assignment, hint", [
    ("gpu=0", "gpus"),
    ("rendezvous_prot=1", "rendezvous_port"),
    ("nccl_socket_ifnam=eth0", "nccl_socket_ifname"),
])
def test_typos_get_a_did_you_mean(assignment, hint):
    extra, problems = parse(assignment)
    key = assignment.partition("=")[0]
    assert extra == {}
    assert problems == [f"-e {key}: unknown setting (did you mean {hint!r}?)"]


@pytest.mark.parametrize("assignment", ["gpus", "=4", ""])
def test_malformed_assignments(assignment):
    extra, problems = parse(assignment)
    assert extra == {}
    assert problems == [f"-e {assignment!r}: expected KEY=VALUE"]


def test_every_problem_is_reported():
    extra, problems = parse("gpu=1", "gpus=x", "rendezvous_port=29600", "bad")
    assert extra == {"rendezvous_port": 29600}
    assert len(problems) == 3


def test_extra_vars_beat_host_group_and_all_vars(inventory):
    plain = load_inventory(inventory)
    assert [plain.hosts[h].vars["gpus"] for h in ("g1", "g2", "c1")] == [2, 4, 0]

    inv = load_inventory(inventory, extra_vars=("gpus=0", "ansible_port=2222", "user=ops"))
    for host in inv.hosts.values():
        assert host.vars["gpus"] == 0 and type(host.vars["gpus"]) is int
        assert host.port == 2222 and host.vars["port"] == 2222
        assert host.user == "ops"
    assert inv.hosts["g1"].vars["rendezvous_port"] == 29400     # untouched vars stay
    assert inv.hosts["g1"].address == "10.0.0.11"


def test_extra_var_problems_name_every_one(inventory):
    with pytest.raises(InventoryError) as info:
        load_inventory(inventory, extra_vars=("gpu=0", "rendezvous_port=http"))
    problems = info.value.problems
    assert "-e gpu: unknown setting (did you mean 'gpus'?)" in problems
    assert any(p.startswith("-e rendezvous_port: ") for p in problems)
    assert len(problems) == 2


def test_extra_vars_are_checked_against_role_arguments_too(inventory):
    known = dict(CORE_SETTINGS, conda_prefix=Setting("conda_prefix", "abspath", ""))
    inv = load_inventory(inventory, known, extra_vars=("conda_prefix=/srv/conda",))
    assert inv.hosts["c1"].vars["conda_prefix"] == "/srv/conda"
    with pytest.raises(InventoryError) as info:
        load_inventory(inventory, known, extra_vars=("conda_prefx=/srv/conda",))
    assert info.value.problems == ["-e conda_prefx: unknown setting (did you mean "
                                   "'conda_prefix'?)"]
    with pytest.raises(InventoryError) as info:
        load_inventory(inventory, known, extra_vars=("conda_prefix=relative/path",))
    assert info.value.problems[0].startswith("-e conda_prefix: ")


# --- the CLI ----------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_inventory_errors_from_e_on_exec_exit_2(inventory):
    result = invoke("exec", inventory, "-e", "gpu=0", "-e", "gpus=x", "true")
    assert result.exit_code == EXIT_USAGE == 2
    assert "2 problem(s) in the inventory" in result.output
    assert "-e gpu: unknown setting (did you mean 'gpus'?)" in result.output
    assert "-e gpus: " in result.output


def test_inventory_errors_from_e_on_setup_exit_2(inventory, tmp_path):
    # Only the preflight role: others are being edited and must not decide this test.
    roles = tmp_path / "roles"
    shutil.copytree(ROLES_DIR / "preflight", roles / "preflight")
    result = invoke("setup", inventory, "--roles-dir", roles, "--extra-vars", "gpus=-3",
                    "--check")
    assert result.exit_code == 2
    assert "-e gpus: must be at least 0, got -3" in result.output


def test_malformed_e_on_exec_exits_2(inventory):
    result = invoke("exec", inventory, "-e", "justaname", "true")
    assert result.exit_code == 2
    assert "-e 'justaname': expected KEY=VALUE" in result.output


def test_a_good_e_on_exec_changes_where_it_connects(tmp_path):
    # The inventory points at an address nobody answers; -e sends exec to a local port that
    # refuses at once, which proves the override reached the connection.
    inventory = tmp_path / "one.yml"
    inventory.write_text("all:\n  hosts:\n    g1: {ansible_host: 192.0.2.1}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = invoke("exec", inventory, "-e", "ansible_host=127.0.0.1", "-e", f"ansible_port={port}",
                    "--connect-timeout", "3", "--json", "true")
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    (only,) = report["hosts"]
    assert only["host"] == "g1" and only["status"] == "unreachable"
    assert str(port) in json.dumps(only)


def test_e_that_points_every_host_at_one_address_is_refused(inventory):
    result = invoke("exec", inventory, "-e", "ansible_host=127.0.0.1", "true")
    assert result.exit_code == 2
    assert "both point at 127.0.0.1:" in result.output


def test_a_string_setting_keeps_what_was_typed():
    """YAML would read 0777 as the number 511; a string setting (a mode) takes the text."""
    from provision.settings import Setting
    extra, problems = parse_extra_vars(["mode=0777", "count=0777"],
                                       {"mode": Setting("mode", "str"),
                                        "count": Setting("count", "int")})
    assert problems == [] and extra == {"mode": "0777", "count": 511}
