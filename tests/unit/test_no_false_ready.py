"""Nothing done is never "ready": no roles, no selected task, no host, a host no task reached,
and a role argument marked `required: true` that a host does not set (issue 10)."""

from __future__ import annotations

import json
import socket
import textwrap

import click
import pytest
from click.testing import CliRunner

from provision.cli import main
from provision.cli.output import readiness, readiness_exit_code, readiness_table
from provision.errors import RoleError
from provision.plan import HostResult
from provision.roles import load_role

pytestmark = pytest.mark.usefixtures("isolated_home")

# A role whose only task never applies: nothing in it needs the host.
SKIPPING = """
description: a role whose task never applies
tasks:
  - name: never
    op: command
    args: {argv: ["true"]}
    when: false
"""
REQUIRING = """
description: a role that cannot run without its argument
args:
  site_token: {type: str, required: true, help: the site's token}
  site_port: {type: port, default: 8080}
tasks:
  - name: uses the token
    op: command
    args: {argv: [echo, "{{ site_token }}"]}
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # nothing listens there once closed


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def roles_dir(tmp_path):
    def make(**roles: str):
        directory = tmp_path / "roles"
        directory.mkdir(exist_ok=True)
        for name, text in roles.items():
            (directory / name).mkdir()
            (directory / name / "role.yml").write_text(textwrap.dedent(text).lstrip())
        return directory
    return make


@pytest.fixture
def dead_inventory(tmp_path):
    """One host at a local port that refuses at once."""
    path = tmp_path / "hosts.yml"
    path.write_text(f"all:\n  hosts:\n    dead: {{ansible_host: 127.0.0.1, "
                    f"ansible_port: {closed_port()}}}\n")
    return path


@pytest.mark.parametrize("command", ["roles", "setup", "check"])
def test_a_roles_dir_without_roles_is_an_error(command, roles_dir, dead_inventory):
    empty = roles_dir()
    args = [command] + ([] if command == "roles" else [dead_inventory])
    result = invoke(*args, "--roles-dir", empty)
    assert result.exit_code == 2, result.output
    assert f"no roles in {empty}" in result.output
    assert "ready" not in result.output


def test_check_against_a_host_no_task_needed_reaches_it(roles_dir, dead_inventory):
    """Every task skipped: the host was never contacted, and was reported 1/1 ready, exit 0."""
    roles = roles_dir(skipping=SKIPPING)
    result = invoke("check", dead_inventory, "--roles-dir", roles, "--connect-timeout", "3")
    assert result.exit_code == 4, result.output
    assert "1/1 host(s) ready" not in result.output and "0/1 host(s) ready" in result.output
    assert "dead ssh: UNREACHABLE: dead: cannot connect to 127.0.0.1" in result.output


def test_setup_against_a_host_no_task_needed_reaches_it(roles_dir, dead_inventory):
    roles = roles_dir(skipping=SKIPPING)
    result = invoke("setup", dead_inventory, "--roles-dir", roles, "--connect-timeout", "3",
                    "--json")
    assert result.exit_code == 4, result.output
    (host,) = json.loads(result.stdout)["hosts"]
    assert host["status"] == "unreachable"


@pytest.mark.parametrize("command", ["setup", "check"])
def test_tags_that_select_nothing_are_an_error(command, dead_inventory):
    result = invoke(command, dead_inventory, "--tags", "no-such-tag")
    assert result.exit_code == 2, result.output
    assert "--tags no-such-tag: no task of the roles preflight, nvidia" in result.output


def test_a_limit_that_selects_no_host_is_an_error(roles_dir, dead_inventory):
    result = invoke("check", dead_inventory, "--roles-dir", roles_dir(skipping=SKIPPING),
                    "--limit", ",")
    assert result.exit_code == 2, result.output
    assert "no hosts in" in result.output and "ready" not in result.output


def test_a_host_without_any_task_result_is_not_ready(capsys):
    nothing = HostResult("g1", [])
    assert readiness([nothing]) == {"g1": {"tasks": "NOT CHECKED: no task ran on this host"}}
    assert readiness_exit_code([nothing]) == 3
    assert readiness_exit_code([]) == 3
    readiness_table(readiness([nothing]))
    out = capsys.readouterr().out
    assert click.unstyle(out).splitlines()[-1] == "0/1 host(s) ready"


# --- required: true ---------------------------------------------------------------------------

def test_required_arguments_are_recorded(roles_dir):
    role = load_role("site", roles_dir(site=REQUIRING))
    assert role.required == ("site_token",)
    assert "site_token" not in role.defaults


@pytest.mark.parametrize("spec, problem", [
    ("{type: str, required: true, default: abc}", "is required and has a default"),
    ("{type: str, required: 1}", "required of 'site_token' must be true or false"),
    ("{type: str, required: 'yes'}", "required of 'site_token' must be true or false"),
])
def test_a_contradictory_or_malformed_required_is_refused(roles_dir, spec, problem):
    roles = roles_dir(site=f"args:\n  site_token: {spec}\ntasks: []\n")
    with pytest.raises(RoleError, match=problem):
        load_role("site", roles)


def test_setup_refuses_hosts_that_do_not_set_a_required_argument(roles_dir, tmp_path):
    roles = roles_dir(site=REQUIRING)
    inventory = tmp_path / "hosts.yml"
    port = closed_port()
    inventory.write_text(textwrap.dedent(f"""
        all:
          hosts:
            a: {{ansible_host: 127.0.0.1, ansible_port: {port}, site_token: t0k}}
            b: {{ansible_host: 127.0.0.2, ansible_port: {port}}}
            c: {{ansible_host: 127.0.0.3, ansible_port: {port}}}
    """))
    for command in ("setup", "check"):
        result = invoke(command, inventory, "--roles-dir", roles, "--connect-timeout", "3")
        assert result.exit_code == 2, result.output
        assert "role site requires 'site_token', which is not set for b, c" in result.output
    # Set for every host (here with -e): the run goes ahead (and finds the hosts unreachable).
    result = invoke("setup", inventory, "--roles-dir", roles, "-e", "site_token=x",
                    "--connect-timeout", "3")
    assert result.exit_code == 4, result.output


def test_roles_lists_a_required_argument_as_required(roles_dir):
    result = invoke("roles", "--roles-dir", roles_dir(site=REQUIRING))
    assert result.exit_code == 0, result.output
    assert "site_token (str) = (required)" in result.output
    assert "site_port (port) = 8080" in result.output
