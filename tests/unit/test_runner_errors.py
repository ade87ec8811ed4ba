"""An error in one host's work (a bug, a bad role) fails that host, never the run: the others
finish, the recap and the retry file are written, the exit code is 3, and no Python traceback
reaches the user (it is in --json, and printed with -v).

The hosts are LocalConnection: it stands in for the SSH connection only, and runs each command
(the real fact scripts) on this machine.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from click.testing import CliRunner

import provision.runner
from provision.cli import main
from provision.checks import CLUSTER_CHECKS
from provision.connection import CommandResult, as_command

pytestmark = pytest.mark.usefixtures("isolated_home")


class LocalConnection:
    """Stands in for connection.HostConnection: every command runs here, under sh."""

    def __init__(self, host, options):
        self.host = host
        self.options = options.for_host(host)

    def open(self):
        pass

    def close(self):
        pass

    def abort(self, error):
        pass

    def run(self, command, *, sudo=False, stdin=None, timeout=None, on_line=None, on_sent=None):
        done = subprocess.run(as_command(command), shell=True, input=stdin, capture_output=True,
                              timeout=60)
        return CommandResult(str(command), done.returncode, done.stdout.decode(),
                             done.stderr.decode())


@pytest.fixture
def local_hosts(monkeypatch):
    monkeypatch.setattr(provision.runner, "HostConnection", LocalConnection)


def write_role(roles, name: str, text: str) -> None:
    (roles / name).mkdir(parents=True)
    (roles / name / "role.yml").write_text(textwrap.dedent(text))


@pytest.fixture
def setup(tmp_path, local_hosts):
    """A role editing a file on three local "hosts"; h2's regexp is not a regular expression."""
    roles = tmp_path / "roles"
    write_role(roles, "editing", """
        description: edits a line
        args:
          probe_file: {type: abspath}
          probe_regexp: {type: str, default: "^x="}
        tasks:
          - name: settings line
            op: line_in_file
            args: {path: "{{ probe_file }}", line: "x=1", regexp: "{{ probe_regexp }}"}
        """)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(textwrap.dedent(f"""
        all:
          vars: {{probe_file: {tmp_path / 'settings'}}}
          hosts:
            h1: {{ansible_host: 10.9.0.1}}
            h2: {{ansible_host: 10.9.0.2, probe_regexp: "(unclosed"}}
            h3: {{ansible_host: 10.9.0.3}}
        """))

    def run(*args: str):
        return CliRunner().invoke(main, ["setup", str(inventory), "--check", "--roles-dir",
                                         str(roles), *args])
    return run, inventory


def test_a_bad_regexp_fails_its_host_and_the_others_finish(setup):
    run, inventory = setup
    result = run()
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "FAILED h2 [editing] settings line: unexpected error: re.error: missing )" \
        in result.stdout
    assert "RECAP" in result.stdout
    for host in ("h1", "h3"):
        assert f"WOULD CHANGE {host} [editing] settings line" in result.stdout
    assert (inventory.parent / "hosts.yml.retry").read_text().split() == ["h2"]


def test_the_traceback_is_in_json_and_with_verbose(setup):
    run, _ = setup
    report = json.loads(run("--json").stdout)
    (task,) = report["hosts"][1]["tasks"]
    assert task["status"] == "failed" and "re.error" in task["traceback"]
    assert "Traceback (most recent call last)" in task["traceback"]
    assert [h["status"] for h in report["hosts"]] == ["changed", "failed", "changed"]
    verbose = run("-v")
    assert verbose.exit_code == 3
    assert "h2 | Traceback (most recent call last)" in verbose.stderr


def test_a_cluster_check_that_raises_fails_its_hosts(tmp_path, local_hosts, monkeypatch):
    def explode(context):
        raise ValueError("a fact's output cannot be parsed")
    monkeypatch.setitem(CLUSTER_CHECKS, "explode", explode)
    roles = tmp_path / "roles"
    write_role(roles, "checked", f"""
        description: a task, then a cross-host check that raises
        tasks:
          - name: directory
            op: file
            args: {{path: "{tmp_path / 'dir'}", state: directory}}
        cluster_checks: [explode]
        """)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    h1: {ansible_host: 10.9.0.1}\n"
                         "    h2: {ansible_host: 10.9.0.2}\n")

    result = CliRunner().invoke(main, ["setup", str(inventory), "--check", "--roles-dir",
                                       str(roles), "--json"])

    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    for host in report["hosts"]:
        check = host["tasks"][-1]
        assert (check["task"], check["status"]) == ("explode", "failed")
        assert check["message"] == \
            "unexpected error: ValueError: a fact's output cannot be parsed"
        assert "raise ValueError" in check["traceback"]
    assert (tmp_path / "hosts.yml.retry").read_text().split() == ["h1", "h2"]
