"""`provision check`: readiness, readiness_exit_code, readiness_table, and the command's exit
codes (0 ready, 3 not set up or failed, 4 unreachable)."""

from __future__ import annotations

import json
import shutil
import socket
import textwrap

import click
import pytest
from click.testing import CliRunner

import provision.cli
from provision.cli import main
from provision.cli.output import readiness, readiness_exit_code, readiness_table
from provision.plan import HostResult, Status, TaskResult
from provision.roles import ROLES_DIR

OK, CHANGED, FAILED, SKIPPED = Status.OK, Status.CHANGED, Status.FAILED, Status.SKIPPED


def host(name: str, *tasks: tuple[str, str, Status, str], unreachable: str | None = None):
    return HostResult(name, [TaskResult(name, role, task, status, message)
                             for role, task, status, message in tasks], unreachable)


READY = host("g1", ("preflight", "host is fit", OK, "fit"),
             ("nvidia", "driver", OK, "550 loaded"), ("nvidia", "persistence", SKIPPED, "no"))
PENDING = host("g2", ("preflight", "host is fit", OK, "fit"),
               ("nvidia", "driver", CHANGED, "would install 550"),
               ("nvidia", "persistence", CHANGED, "would enable"))
BROKEN = host("g3", ("preflight", "host is fit", FAILED, "only 2.0 GB free on /opt"),
              ("nvidia", "driver", SKIPPED, "preflight failed"))
CPU = host("c1", ("preflight", "host is fit", OK, "fit"), ("nvidia", "driver", SKIPPED, "no GPU"),
           ("nvidia", "persistence", SKIPPED, "no GPU"))
GONE = host("g4", unreachable="g4: cannot connect to 10.0.0.14:22: timed out")


def test_readiness_table_of_every_state():
    assert readiness([READY, PENDING, BROKEN, CPU, GONE]) == {
        "g1": {"preflight": "ready", "nvidia": "ready"},
        "g2": {"preflight": "ready", "nvidia": "not set up: 2 to change (driver)"},
        "g3": {"preflight": "FAILED: only 2.0 GB free on /opt", "nvidia": "skipped"},
        "c1": {"preflight": "ready", "nvidia": "skipped"},
        "g4": {"ssh": "UNREACHABLE: g4: cannot connect to 10.0.0.14:22: timed out"},
    }


def test_readiness_keeps_role_order_and_a_failure_beats_pending():
    mixed = host("g5", ("nvidia", "a", CHANGED, "x"), ("preflight", "b", OK, "y"),
                 ("nvidia", "c", FAILED, "boom"))
    assert list(readiness([mixed])["g5"].items()) == [("nvidia", "FAILED: boom"),
                                                      ("preflight", "ready")]


@pytest.mark.parametrize("results, code", [
    ([], 3),                              # no host: nothing is ready
    ([READY, CPU], 0),
    ([READY, PENDING], 3),
    ([READY, BROKEN], 3),
    ([READY, GONE], 4),
    ([PENDING, BROKEN, GONE], 4),        # unreachable wins
    ([host("h", ("r", "t", SKIPPED, "n/a"))], 0),
])
def test_readiness_exit_code(results, code):
    assert readiness_exit_code(results) == code


def test_readiness_table_output(capsys):
    readiness_table(readiness([READY, PENDING, BROKEN, GONE]))
    out, err = capsys.readouterr()
    lines = [click.unstyle(line).rstrip() for line in out.splitlines()]
    assert lines[0].split() == ["HOST", "preflight", "nvidia", "ssh"]
    assert lines[1].split() == ["g1", "ready", "ready", "-"]
    assert lines[2].split() == ["g2", "ready", "not", "set", "up", "-"]
    assert lines[3].split() == ["g3", "FAILED", "skipped", "-"]
    assert lines[4].split() == ["g4", "-", "-", "UNREACHABLE"]
    assert lines[-1] == "1/4 host(s) ready"
    # Columns line up: every row's second cell starts where the header's does.
    column = lines[0].index("preflight")
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines[1:5])
    assert err.splitlines() == [
        "g2 nvidia: not set up: 2 to change (driver)",
        "g3 preflight: FAILED: only 2.0 GB free on /opt",
        "g4 ssh: UNREACHABLE: g4: cannot connect to 10.0.0.14:22: timed out"]


def test_readiness_table_counts_skipped_as_ready(capsys):
    readiness_table(readiness([READY, CPU]))
    assert capsys.readouterr().out.splitlines()[-1] == "2/2 host(s) ready"


# --- the command ------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hosts:\n    g1: {ansible_host: 10.0.0.11}\n")
    return path


@pytest.mark.parametrize("results, code", [
    ([READY, CPU], 0), ([READY, PENDING], 3), ([BROKEN], 3), ([READY, GONE], 4)])
def test_check_command_exit_codes(monkeypatch, inventory, results, code):
    calls = []

    def run_setup(inventory_path, limit, forks, tags, role_names, roles_dir, ssh, check,
                  listener):
        calls.append(check)
        return None, results
    monkeypatch.setattr(provision.cli, "run_setup", run_setup)

    text = CliRunner().invoke(main, ["check", str(inventory)])
    as_json = CliRunner().invoke(main, ["check", str(inventory), "--json"])

    assert calls == [True, True]              # check never changes anything
    assert text.exit_code == code and as_json.exit_code == code
    assert f"{sum(code == 0 or r in (READY, CPU) for r in results)}/{len(results)} host(s) " \
           "ready" in text.output
    report = json.loads(as_json.stdout)
    assert report["ready"] == readiness(results)
    assert [h["host"] for h in report["hosts"]] == [r.host for r in results]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # nothing listens there once closed


def test_check_command_with_a_really_unreachable_host(tmp_path):
    # A real connection attempt, refused at once; only the preflight role (not being edited).
    roles = tmp_path / "roles"
    shutil.copytree(ROLES_DIR / "preflight", roles / "preflight")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(textwrap.dedent(f"""
        all:
          hosts:
            dead: {{ansible_host: 127.0.0.1, ansible_port: {closed_port()}, user: nobody}}
    """))

    result = CliRunner().invoke(main, ["check", str(inventory), "--roles-dir", str(roles),
                                       "--connect-timeout", "3", "--json"])

    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    assert list(report["ready"]) == ["dead"]
    assert report["ready"]["dead"]["ssh"].startswith("UNREACHABLE: dead")


def test_check_command_inventory_error_is_exit_2(tmp_path):
    roles = tmp_path / "roles"
    shutil.copytree(ROLES_DIR / "preflight", roles / "preflight")
    bad = tmp_path / "bad.yml"
    bad.write_text("all:\n  hosts:\n    g1: {ansible_host: 10.0.0.1, gpus: many}\n")
    result = CliRunner().invoke(main, ["check", str(bad), "--roles-dir", str(roles)])
    assert result.exit_code == 2
    assert "gpus" in result.output
